//! End-to-end tests of the agent inside its crate: real files in temp dirs, the real tailer thread
//! and forwarder, and a small in-test aggregator double (`util.rs`) on 127.0.0.1:0.

mod docker;
mod edges;
mod forward;
mod multiline;
mod parsing;
mod tailer;
mod util;
