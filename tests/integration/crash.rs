//! Crash safety: agent and aggregator are each SIGKILLed at random points of a 200k-line run and
//! restarted; the store must end with every line exactly once.

use std::time::Duration;

use crate::util::*;
use crate::workload::*;

#[test]
fn sigkill_of_agent_and_aggregator_loses_and_duplicates_nothing() {
    let seed = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test seed: {seed} (set FERRY_TEST_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);

    let w = World::new();
    let config = w.config("", "");
    let logs = w.path("logs");
    let mut writers = [
        LogWriter::docker(&logs, "kda"),
        LogWriter::docker(&logs, "kdb"),
        LogWriter::cri(&logs, "kca"),
        LogWriter::cri(&logs, "kcb"),
    ];
    let mut aggregator = w.start_aggregator(&config);
    let mut agent = w.start_agent(&config);

    // 4 files × 25 000 pairs × 2 streams = 200 000 lines, in 100 rounds.
    let rounds = 100;
    // Kill points: 4 of each process, at random distinct rounds, in random order.
    let mut points: Vec<usize> = Vec::new();
    while points.len() < 8 {
        let r = rng.usize(2..rounds - 2);
        if !points.contains(&r) {
            points.push(r);
        }
    }
    let mut kills = (0, 0);
    for round in 0..rounds {
        for wr in writers.iter_mut() {
            wr.write_pairs(250);
        }
        if let Some(i) = points.iter().position(|p| *p == round) {
            // Let the pipeline get going so the kill lands mid-flight, at a random moment.
            std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
            if i % 2 == 0 {
                agent.kill();
                kills.0 += 1;
                for wr in writers.iter_mut() {
                    wr.write_pairs(100);
                }
                agent = w.start_agent(&config);
            } else {
                aggregator.kill();
                kills.1 += 1;
                aggregator = w.start_aggregator(&config);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(kills.0 >= 3 && kills.1 >= 3, "kills {kills:?}");
    let refs: Vec<&LogWriter> = writers.iter().collect();
    let expected: u64 = refs.iter().map(|w| w.lines_written()).sum();
    assert!(expected >= 200_000, "{expected}");

    let store = w.agg_data().join("store");
    wait_for("every line in the store", Duration::from_secs(300), || {
        let n: usize = ["kda", "kdb", "kca", "kcb"]
            .iter()
            .map(|t| count_tag(&store, t))
            .sum();
        (n as u64 >= expected).then_some(())
    });
    // Stop both cleanly so the store is final (a late replay would land before this), then check.
    assert_eq!(agent.terminate().code(), Some(0));
    assert_eq!(aggregator.terminate().code(), Some(0));
    let v = verify(&w.stored(), &refs);
    eprintln!(
        "crash test: {} agent kills, {} aggregator kills, {} lines written, {} stored, lost {}, duplicated {}",
        kills.0, kills.1, expected, v.total, v.lost, v.duplicated
    );
    assert!(v.wrong.is_empty(), "wrong records: {:#?}", v.wrong);
    assert_eq!(v.lost, 0, "lost lines");
    assert_eq!(v.duplicated, 0, "duplicated lines");
    assert_eq!(v.out_of_order, 0);
    assert_eq!(v.total as u64, expected);
}
