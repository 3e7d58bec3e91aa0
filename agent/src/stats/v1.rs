//! Cgroup v1 files → cAdvisor metrics.
//!
//! Values follow cAdvisor's definitions: the hierarchical `total_*` keys of `memory.stat`,
//! working set = usage − `total_inactive_file` (floored at 0), a memory limit above 2^62 (the
//! kernel's "unlimited") reported as 0, block IO summed over devices. A file that is missing is
//! skipped silently (debug log in [`Reader`]); the rest of the sample is still read.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::cgroup::{keyed, Reader};
use super::{m, memory, memory_limit, put};

/// USER_HZ: the unit of `cpuacct.stat` (100 on every Linux ABI the agent runs on).
const USER_HZ: f64 = 100.0;

pub(crate) fn read(
    dirs: &HashMap<String, PathBuf>,
    r: &mut Reader,
    out: &mut BTreeMap<String, f64>,
) {
    if let Some(dir) = dirs.get("cpuacct") {
        if let Some(ns) = r.u64(dir, "cpuacct.usage") {
            put(out, m::CPU_USAGE, ns as f64 / 1e9);
        }
        match (
            r.u64(dir, "cpuacct.usage_user"),
            r.u64(dir, "cpuacct.usage_sys"),
        ) {
            (Some(user), Some(sys)) => {
                put(out, m::CPU_USER, user as f64 / 1e9);
                put(out, m::CPU_SYSTEM, sys as f64 / 1e9);
            }
            // Kernels before 4.7: only the tick counts.
            _ => {
                if let Some(text) = r.read(dir, "cpuacct.stat") {
                    let user = keyed(text, "user");
                    let system = keyed(text, "system");
                    if let Some(v) = user {
                        put(out, m::CPU_USER, v as f64 / USER_HZ);
                    }
                    if let Some(v) = system {
                        put(out, m::CPU_SYSTEM, v as f64 / USER_HZ);
                    }
                }
            }
        }
    }
    if let Some(dir) = dirs.get("cpu") {
        if let Some(text) = r.read(dir, "cpu.stat") {
            let periods = keyed(text, "nr_periods");
            let throttled = keyed(text, "nr_throttled");
            let throttled_ns = keyed(text, "throttled_time");
            if let Some(v) = periods {
                put(out, m::CFS_PERIODS, v as f64);
            }
            if let Some(v) = throttled {
                put(out, m::CFS_THROTTLED_PERIODS, v as f64);
            }
            if let Some(v) = throttled_ns {
                put(out, m::CFS_THROTTLED_SECONDS, v as f64 / 1e9);
            }
        }
        if let Some(shares) = r.u64(dir, "cpu.shares") {
            put(out, m::SPEC_CPU_SHARES, shares as f64);
        }
        // `cpu.cfs_quota_us` is -1 without a limit: cAdvisor shows quota and period only with one.
        let quota = r
            .read(dir, "cpu.cfs_quota_us")
            .and_then(|t| t.trim().parse::<i64>().ok());
        if let Some(quota) = quota.filter(|q| *q > 0) {
            put(out, m::SPEC_CPU_QUOTA, quota as f64);
            if let Some(period) = r.u64(dir, "cpu.cfs_period_us") {
                put(out, m::SPEC_CPU_PERIOD, period as f64);
            }
        }
    }
    if let Some(dir) = dirs.get("memory") {
        let usage = r.u64(dir, "memory.usage_in_bytes");
        let stat = r.read(dir, "memory.stat");
        memory(
            out,
            usage,
            stat,
            "total_inactive_file",
            &[
                ("total_rss", m::MEMORY_RSS),
                ("total_cache", m::MEMORY_CACHE),
                ("total_swap", m::MEMORY_SWAP),
                ("total_mapped_file", m::MEMORY_MAPPED_FILE),
            ],
        );
        if let Some(v) = r.u64(dir, "memory.max_usage_in_bytes") {
            put(out, m::MEMORY_MAX_USAGE, v as f64);
        }
        if let Some(v) = r.u64(dir, "memory.limit_in_bytes") {
            put(out, m::SPEC_MEMORY_LIMIT, memory_limit(Some(v)));
        }
        // `oom_kill` is in `memory.oom_control` since Linux 4.13.
        if let Some(v) = r
            .read(dir, "memory.oom_control")
            .and_then(|t| keyed(t, "oom_kill"))
        {
            put(out, m::OOM_EVENTS, v as f64);
        }
    }
    if let Some(dir) = dirs.get("blkio") {
        // The throttle files count every bio whatever the IO scheduler; the CFQ/BFQ ones do not
        // exist (or stay 0) with `none`/`mq-deadline`.
        for (files, read_name, write_name) in [
            (
                [
                    "blkio.throttle.io_service_bytes_recursive",
                    "blkio.throttle.io_service_bytes",
                ],
                m::FS_READS_BYTES,
                m::FS_WRITES_BYTES,
            ),
            (
                [
                    "blkio.throttle.io_serviced_recursive",
                    "blkio.throttle.io_serviced",
                ],
                m::FS_READS,
                m::FS_WRITES,
            ),
        ] {
            let Some(text) = files.iter().find_map(|f| r.read(dir, f).map(str::to_owned)) else {
                continue;
            };
            let (reads, writes) = blkio_totals(&text);
            put(out, read_name, reads as f64);
            put(out, write_name, writes as f64);
        }
    }
    if let Some(dir) = dirs.get("pids") {
        if let Some(v) = r.u64(dir, "pids.current") {
            put(out, m::THREADS, v as f64);
        }
        if let Some(text) = r.read(dir, "pids.max") {
            put(
                out,
                m::THREADS_MAX,
                text.trim().parse::<u64>().unwrap_or(0) as f64,
            );
        }
        if let Some(text) = r.read(dir, "cgroup.procs") {
            put(out, m::PROCESSES, text.lines().count() as f64);
        }
    }
}

/// Sums the `Read` and `Write` lines of a blkio file over all devices (`<maj:min> <op> <n>`).
fn blkio_totals(text: &str) -> (u64, u64) {
    let (mut reads, mut writes) = (0u64, 0u64);
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => reads = reads.saturating_add(n),
            "Write" => writes = writes.saturating_add(n),
            _ => {}
        }
    }
    (reads, writes)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn fixture(root: &Path) -> HashMap<String, PathBuf> {
        let d = |c: &str| root.join(c).join("docker/abc");
        write(&d("cpuacct"), "cpuacct.usage", "2500000000\n");
        write(&d("cpuacct"), "cpuacct.usage_user", "2000000000\n");
        write(&d("cpuacct"), "cpuacct.usage_sys", "500000000\n");
        write(
            &d("cpu"),
            "cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 1500000000\n",
        );
        write(&d("cpu"), "cpu.shares", "1024\n");
        write(&d("cpu"), "cpu.cfs_quota_us", "50000\n");
        write(&d("cpu"), "cpu.cfs_period_us", "100000\n");
        write(&d("memory"), "memory.usage_in_bytes", "104857600\n");
        write(
            &d("memory"),
            "memory.stat",
            "cache 1\nrss 2\ntotal_cache 20971520\ntotal_rss 73400320\ntotal_swap 0\ntotal_mapped_file 4096\ntotal_inactive_file 10485760\n",
        );
        write(
            &d("memory"),
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            &d("memory"),
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            &d("blkio"),
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 100\n8:16 Write 0\n8:16 Total 100\nTotal 12388\n",
        );
        write(
            &d("blkio"),
            "blkio.throttle.io_serviced_recursive",
            "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
        );
        write(&d("pids"), "pids.current", "5\n");
        write(&d("pids"), "pids.max", "max\n");
        write(&d("pids"), "cgroup.procs", "1\n7\n");
        ["cpu", "cpuacct", "memory", "blkio", "pids"]
            .iter()
            .map(|c| (c.to_string(), d(c)))
            .collect()
    }

    #[test]
    fn reads_every_metric_with_cadvisor_units() {
        let root = tempfile::tempdir().unwrap();
        let dirs = fixture(root.path());
        let mut out = BTreeMap::new();
        read(&dirs, &mut Reader::default(), &mut out);
        let expect = [
            (m::CPU_USAGE, 2.5),
            (m::CPU_USER, 2.0),
            (m::CPU_SYSTEM, 0.5),
            (m::CFS_PERIODS, 10.0),
            (m::CFS_THROTTLED_PERIODS, 4.0),
            (m::CFS_THROTTLED_SECONDS, 1.5),
            (m::SPEC_CPU_SHARES, 1024.0),
            (m::SPEC_CPU_QUOTA, 50000.0),
            (m::SPEC_CPU_PERIOD, 100000.0),
            (m::MEMORY_USAGE, 104857600.0),
            (m::MEMORY_WORKING_SET, 94371840.0),
            (m::MEMORY_RSS, 73400320.0),
            (m::MEMORY_CACHE, 20971520.0),
            (m::MEMORY_SWAP, 0.0),
            (m::MEMORY_MAPPED_FILE, 4096.0),
            (m::SPEC_MEMORY_LIMIT, 0.0),
            (m::OOM_EVENTS, 2.0),
            (m::FS_READS_BYTES, 4196.0),
            (m::FS_WRITES_BYTES, 8192.0),
            (m::FS_READS, 1.0),
            (m::FS_WRITES, 2.0),
            (m::THREADS, 5.0),
            (m::THREADS_MAX, 0.0),
            (m::PROCESSES, 2.0),
        ];
        for (name, value) in expect {
            assert_eq!(out.get(name), Some(&value), "{name}");
        }
        assert_eq!(out.len(), expect.len(), "{out:?}");
    }

    #[test]
    fn missing_files_skip_only_their_metrics() {
        let root = tempfile::tempdir().unwrap();
        let dirs = fixture(root.path());
        let mem = &dirs["memory"];
        std::fs::remove_file(mem.join("memory.stat")).unwrap();
        std::fs::remove_file(mem.join("memory.oom_control")).unwrap();
        std::fs::remove_file(dirs["cpuacct"].join("cpuacct.usage_user")).unwrap();
        std::fs::write(
            dirs["cpuacct"].join("cpuacct.stat"),
            "user 150\nsystem 50\n",
        )
        .unwrap();
        std::fs::write(dirs["cpu"].join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::remove_dir_all(&dirs["blkio"]).unwrap();
        let mut out = BTreeMap::new();
        read(&dirs, &mut Reader::default(), &mut out);
        assert_eq!(out.get(m::MEMORY_USAGE), Some(&104857600.0));
        assert_eq!(out.get(m::CPU_USER), Some(&1.5), "falls back to ticks");
        assert_eq!(out.get(m::CPU_SYSTEM), Some(&0.5));
        for gone in [
            m::MEMORY_WORKING_SET,
            m::MEMORY_RSS,
            m::OOM_EVENTS,
            m::FS_READS_BYTES,
            m::SPEC_CPU_QUOTA,
            m::SPEC_CPU_PERIOD,
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        // A container that vanished entirely: nothing, and no panic.
        std::fs::remove_dir_all(root.path()).unwrap();
        let mut out = BTreeMap::new();
        read(&dirs, &mut Reader::default(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn limited_memory_is_reported_as_is() {
        let root = tempfile::tempdir().unwrap();
        let dirs = fixture(root.path());
        std::fs::write(dirs["memory"].join("memory.limit_in_bytes"), "33554432\n").unwrap();
        let mut out = BTreeMap::new();
        read(&dirs, &mut Reader::default(), &mut out);
        assert_eq!(out.get(m::SPEC_MEMORY_LIMIT), Some(&33554432.0));
    }
}
