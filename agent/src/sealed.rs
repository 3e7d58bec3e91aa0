//! What every producer hands the forwarder: a sealed batch (the tailer's log records, a logs-API
//! follower's, a stats pass) with the checkpoint updates it carries. A shared type only, below
//! both the producers and the forwarder, so neither side depends on the other.

use ferry_wire::EncodedBatch;

use crate::checkpoint::Update;

/// A sealed batch (or none, when only checkpoints moved) and the checkpoint updates that become
/// true once it is acknowledged.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub batch: Option<EncodedBatch>,
    pub updates: Vec<Update>,
    /// New sources, at the offset their reading started: true before the batch is sent, so the
    /// forwarder makes them durable first. A source read, then acknowledged, then moved to a
    /// copy before its first checkpoint would otherwise be found again after a crash as a file
    /// nobody read, and read again under another identity.
    pub register: Vec<Update>,
}
