//! The thread of the local store (or the discard sink): drains the durable queue in order into
//! it, commits its position, and lets the queue trim what every sink has passed. (The
//! Elasticsearch sink has its own threads: [`crate::elasticsearch`].)
//!
//! It runs on a plain thread (the store's writes and fsyncs are blocking), wakes on the queue's
//! condition variable rather than polling, and takes whatever entries are already durable (up
//! to [`GROUP_BYTES`]) into one commit. A store failure is counted and the same group is retried
//! after [`RETRY_DELAY`]; nothing moves past an entry the sink has not confirmed. On shutdown it
//! drains what is queued until the deadline the queue was closed with.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{error, info, warn};

use crate::local::{Applied, LocalStore};
use crate::metrics::{Metrics, SinkError};
use crate::queue::{Entry, Queue, QueueError, QueueReader, Wait};

/// Most bytes of queue entries applied in one commit.
const GROUP_BYTES: u64 = 32 << 20;
/// Pause before retrying a group the store failed to take.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Where the queue drains to.
#[derive(Debug)]
pub(crate) enum Sink {
    Local(LocalStore),
    /// Counts records and drops them. Its position is not persisted: after a restart it counts
    /// again whatever is left in the queue's oldest segment.
    Discard,
}

/// Runs the sink until the queue closes and drains (or its deadline passes).
/// `alive` is cleared when the thread ends, however it ends.
pub(crate) fn run(
    mut sink: Sink,
    queue: Queue,
    mut reader: QueueReader,
    metrics: Arc<Metrics>,
    alive: Arc<AtomicBool>,
) {
    struct ClearOnExit(Arc<AtomicBool>);
    impl Drop for ClearOnExit {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let _alive = ClearOnExit(alive);
    info!("Sink started");
    if let Sink::Local(store) = &sink {
        metrics
            .store_sources
            .store(store.sources() as u64, Ordering::Relaxed);
    }
    while let Some(group) = next_group(&mut reader, &queue, &metrics) {
        let started = Instant::now();
        let position = reader.position();
        let entries = group.entries.len();
        let bytes: u64 = group.entries.iter().map(|e| e.bytes).sum::<u64>() + group.skipped;
        let records: u64 = group.entries.iter().map(|e| e.records).sum();
        loop {
            let result = match &mut sink {
                Sink::Local(store) => store.apply(
                    group.entries.iter().map(|e| &e.data[..]),
                    position,
                    Utc::now(),
                ),
                Sink::Discard => Ok(Applied {
                    stored: records,
                    ..Default::default()
                }),
            };
            match result {
                Ok(applied) => {
                    metrics
                        .sink_records
                        .fetch_add(applied.stored, Ordering::Relaxed);
                    metrics
                        .sink_duplicates
                        .fetch_add(applied.duplicates, Ordering::Relaxed);
                    for _ in 0..applied.undecodable {
                        metrics.sink_error(SinkError::Decode);
                    }
                    metrics
                        .store_sources_retired
                        .fetch_add(applied.retired, Ordering::Relaxed);
                    metrics
                        .store_sources_evicted
                        .fetch_add(applied.evicted, Ordering::Relaxed);
                    if let Sink::Local(store) = &sink {
                        metrics
                            .store_sources
                            .store(store.sources() as u64, Ordering::Relaxed);
                    }
                    break;
                }
                Err(e) => {
                    metrics.sink_error(SinkError::Io);
                    error!(error = %e, entries, "Sink write failed; retrying");
                    if queue.pause(RETRY_DELAY) {
                        warn!("Sink stopped with uncommitted entries; they are re-applied at the next start");
                        return;
                    }
                }
            }
        }
        if entries > 0 {
            let per_entry = started.elapsed() / entries as u32;
            for _ in 0..entries {
                metrics.observe_sink(per_entry);
            }
        }
        queue.commit(reader.consumer(), position, bytes, records);
        if let Sink::Local(store) = &mut sink {
            if let Err(e) = store.retain_daily(Utc::now()) {
                metrics.sink_error(SinkError::Io);
                warn!(error = %e, "Store retention failed");
            }
        }
    }
    info!("Sink stopped");
}

/// Entries taken together into one commit; `skipped` counts damaged queue bytes passed over.
struct Group {
    entries: Vec<Entry>,
    skipped: u64,
}

/// Blocks for the next entry, then takes whatever else is already durable up to [`GROUP_BYTES`].
/// `None` once the queue is closed and drained.
fn next_group(reader: &mut QueueReader, queue: &Queue, metrics: &Metrics) -> Option<Group> {
    let mut group = Group {
        entries: Vec::new(),
        skipped: 0,
    };
    let mut bytes = 0;
    loop {
        let wait = if group.entries.is_empty() && group.skipped == 0 {
            Wait::Block
        } else {
            Wait::NoWait
        };
        match reader.next(wait) {
            Ok(Some(entry)) => {
                bytes += entry.bytes;
                group.entries.push(entry);
                if bytes >= GROUP_BYTES {
                    return Some(group);
                }
            }
            Ok(None) if wait == Wait::Block => return None,
            Ok(None) => return Some(group),
            Err(e @ QueueError::Corrupt { .. }) => {
                metrics.sink_error(SinkError::Corrupt);
                match reader.skip_damaged() {
                    Ok(skipped) => {
                        error!(error = %e, skipped_bytes = skipped, "Queue entry damaged; passed over to the next intact entry");
                        group.skipped += skipped;
                    }
                    Err(e) => {
                        error!(error = %e, "Queue unreadable; sink stopping");
                        return None;
                    }
                }
            }
            Err(e) => {
                metrics.sink_error(SinkError::Io);
                error!(error = %e, "Queue read failed; retrying");
                if queue.pause(RETRY_DELAY) {
                    return None;
                }
                if !group.entries.is_empty() {
                    return Some(group);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::tests::{batch, record};
    use crate::queue::Position;

    fn setup(dir: &std::path::Path) -> (LocalStore, Queue, QueueReader, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let store = LocalStore::open(&dir.join("store"), 7, 1000, Utc::now()).unwrap();
        let (queue, start) = Queue::open(
            &dir.join("queue"),
            1 << 20,
            1 << 30,
            store.queue_position(),
            Arc::clone(&metrics),
        )
        .unwrap();
        let reader = queue.reader(start);
        (store, queue, reader, metrics)
    }

    #[test]
    fn drains_what_is_queued_commits_and_clears_alive_when_done() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, queue, reader, metrics) = setup(tmp.path());
        queue
            .append(&batch(&[record("s", 0, "a"), record("s", 1, "b")]))
            .unwrap();
        queue.append(&batch(&[record("s", 1, "b")])).unwrap();
        queue.close(Instant::now() + Duration::from_secs(30));
        let alive = Arc::new(AtomicBool::new(true));
        run(
            Sink::Local(store),
            queue.clone(),
            reader,
            Arc::clone(&metrics),
            Arc::clone(&alive),
        );
        assert!(!alive.load(Ordering::SeqCst));
        assert_eq!(metrics.sink_records.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.sink_duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.queue_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.queue_records.load(Ordering::Relaxed), 0);
        assert!(metrics
            .render()
            .contains("ferry_sink_duration_seconds_count 2\n"));
        assert!(metrics.render().contains("ferry_store_sources 1\n"));
        drop(queue);

        // The commit is durable: a reopened store and queue have nothing left to do.
        let (store, _queue, mut reader, metrics) = setup(tmp.path());
        assert_ne!(store.queue_position(), Position::default());
        assert!(reader.next(crate::queue::Wait::NoWait).unwrap().is_none());
        assert_eq!(metrics.queue_bytes.load(Ordering::Relaxed), 0);
    }

    /// Damage in the middle of a segment costs only the damaged entry: the intact entries after
    /// it, in the same segment and the next, reach the store.
    #[test]
    fn passes_over_a_damaged_entry_and_stores_the_intact_ones_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store_dir = tmp.path().join("store");
        let store = LocalStore::open(&store_dir, 7, 1000, Utc::now()).unwrap();
        let entries: Vec<Vec<u8>> = (0..6)
            .map(|offset| batch(&[record("s", offset, "m")]))
            .collect();
        let entry_bytes = |e: &Vec<u8>| e.len() as u64 + crate::queue::ENTRY_OVERHEAD_BYTES;
        // Entries 0..4 fill segment 1; entry 5 starts segment 2.
        let segment_bytes: u64 = entries[..5].iter().map(entry_bytes).sum();
        let (queue, start) = Queue::open(
            &tmp.path().join("queue"),
            segment_bytes,
            1 << 30,
            Position::default(),
            Arc::clone(&metrics),
        )
        .unwrap();
        for e in &entries {
            queue.append(e).unwrap();
        }
        let first = tmp.path().join("queue").join(format!("{:020}.seg", 1));
        let mut bytes = std::fs::read(&first).unwrap();
        let damaged_at = (entry_bytes(&entries[0]) + entry_bytes(&entries[1])) as usize;
        bytes[damaged_at + 20] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        queue.close(Instant::now() + Duration::from_secs(30));
        let alive = Arc::new(AtomicBool::new(true));
        run(
            Sink::Local(store),
            queue.clone(),
            queue.reader(start),
            Arc::clone(&metrics),
            alive,
        );
        let stored: Vec<u64> = std::fs::read_dir(&store_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["log"]["offset"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(stored, [0, 1, 3, 4, 5]);
        let text = metrics.render();
        assert!(
            text.contains("ferry_sink_errors_total{error_type=\"corrupt\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "ferry_queue_damaged_bytes_total {}\n",
            entry_bytes(&entries[2])
        )));
        assert_eq!(metrics.queue_bytes.load(Ordering::Relaxed), 0);
    }
}
