//! The walking skeleton's promise: lines from several Docker json-file and CRI files, through a
//! rename rotation and a copytruncate, arrive in the local store exactly once, in order, with
//! their container and Kubernetes fields.

use std::time::Duration;

use crate::util::*;
use crate::workload::*;

#[test]
fn carries_200k_lines_exactly_once_through_rotation_and_copytruncate() {
    let w = World::new();
    let config = w.config("", "");
    let logs = w.path("logs");
    let mut docker: Vec<LogWriter> = ["dka", "dkb", "dkc"]
        .iter()
        .map(|t| LogWriter::docker(&logs, t))
        .collect();
    let mut cri: Vec<LogWriter> = ["cra", "crb"]
        .iter()
        .map(|t| LogWriter::cri(&logs, t))
        .collect();
    // Some lines exist before the agent starts, the rest are written while it runs.
    for wr in docker.iter_mut().chain(cri.iter_mut()) {
        wr.write_pairs(500);
    }
    let _aggregator = w.start_aggregator(&config);
    let mut agent = w.start_agent(&config);

    // 5 files × 20 000 pairs × 2 streams = 200 000 lines.
    let rounds = 39;
    for round in 0..rounds {
        for wr in docker.iter_mut().chain(cri.iter_mut()) {
            wr.write_pairs(500);
        }
        if round == rounds / 2 {
            // On the writer's schedule, never waiting for the agent: the store must still hold
            // each writer's lines in the order written, across the rotated file and the copy.
            docker[0].rotate_by_rename();
            cri[0].copy_truncate();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let writers: Vec<&LogWriter> = docker.iter().chain(cri.iter()).collect();
    let expected: u64 = writers.iter().map(|w| w.lines_written()).sum();
    assert_eq!(expected, 200_000);

    let store = w.agg_data().join("store");
    wait_for(
        "all 200k lines in the store",
        Duration::from_secs(300),
        || {
            let n: usize = ["dka", "dkb", "dkc", "cra", "crb"]
                .iter()
                .map(|t| count_tag(&store, t))
                .sum();
            (n as u64 >= expected).then_some(())
        },
    );
    assert!(agent.alive(), "agent died: {}", agent.log_text());
    let records = w.stored();
    let v = verify(&records, &writers);
    assert!(v.wrong.is_empty(), "wrong records: {:#?}", v.wrong);
    assert_eq!((v.lost, v.duplicated, v.out_of_order), (0, 0, 0));
    assert_eq!(v.total as u64, expected);
    assert_eq!(
        agent.terminate().code(),
        Some(0),
        "agent stops cleanly on SIGTERM"
    );
}
