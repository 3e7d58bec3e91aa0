//! Cgroup v2 files → cAdvisor metrics.
//!
//! cAdvisor's v2 mapping: RSS = `anon`, cache = `file`, working set = `memory.current` −
//! `inactive_file` (floored at 0), OOM events = `oom_kill` of `memory.events`, `max` limits
//! reported as 0, `cpu.weight` converted back to v1 shares. A missing file skips only its metrics.

use std::collections::BTreeMap;
use std::path::Path;

use super::cgroup::{keyed, Reader};
use super::{m, memory, memory_limit, put};

pub(crate) fn read(dir: &Path, r: &mut Reader, out: &mut BTreeMap<String, f64>) {
    if let Some(text) = r.read(dir, "cpu.stat") {
        for (key, name, scale) in [
            ("usage_usec", m::CPU_USAGE, 1e-6),
            ("user_usec", m::CPU_USER, 1e-6),
            ("system_usec", m::CPU_SYSTEM, 1e-6),
            ("nr_periods", m::CFS_PERIODS, 1.0),
            ("nr_throttled", m::CFS_THROTTLED_PERIODS, 1.0),
            ("throttled_usec", m::CFS_THROTTLED_SECONDS, 1e-6),
        ] {
            if let Some(v) = keyed(text, key) {
                put(out, name, v as f64 * scale);
            }
        }
    }
    if let Some(text) = r.read(dir, "cpu.max") {
        // `<quota|max> <period>`
        let mut f = text.split_ascii_whitespace();
        if let (Some(Ok(quota)), Some(Ok(period))) = (
            f.next().map(str::parse::<u64>),
            f.next().map(str::parse::<u64>),
        ) {
            put(out, m::SPEC_CPU_QUOTA, quota as f64);
            put(out, m::SPEC_CPU_PERIOD, period as f64);
        }
    }
    if let Some(weight) = r.u64(dir, "cpu.weight") {
        // The inverse of runc's shares → weight conversion, as cAdvisor does.
        let shares = 2 + (weight.saturating_sub(1) * 262_142) / 9_999;
        put(out, m::SPEC_CPU_SHARES, shares as f64);
    }
    let usage = r.u64(dir, "memory.current");
    let stat = r.read(dir, "memory.stat");
    memory(
        out,
        usage,
        stat,
        "inactive_file",
        &[
            ("anon", m::MEMORY_RSS),
            ("file", m::MEMORY_CACHE),
            ("file_mapped", m::MEMORY_MAPPED_FILE),
        ],
    );
    if let Some(v) = r.u64(dir, "memory.swap.current") {
        put(out, m::MEMORY_SWAP, v as f64);
    }
    if let Some(v) = r.u64(dir, "memory.peak") {
        put(out, m::MEMORY_MAX_USAGE, v as f64);
    }
    if let Some(text) = r.read(dir, "memory.max") {
        put(
            out,
            m::SPEC_MEMORY_LIMIT,
            memory_limit(text.trim().parse().ok()),
        );
    }
    if let Some(v) = r
        .read(dir, "memory.events")
        .and_then(|t| keyed(t, "oom_kill"))
    {
        put(out, m::OOM_EVENTS, v as f64);
    }
    if let Some(text) = r.read(dir, "io.stat") {
        let mut sums = [0u64; 4];
        // `<maj:min> rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…`, one line per device.
        for field in text.split_ascii_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let i = match key {
                "rbytes" => 0,
                "wbytes" => 1,
                "rios" => 2,
                "wios" => 3,
                _ => continue,
            };
            sums[i] = sums[i].saturating_add(value.parse().unwrap_or(0));
        }
        put(out, m::FS_READS_BYTES, sums[0] as f64);
        put(out, m::FS_WRITES_BYTES, sums[1] as f64);
        put(out, m::FS_READS, sums[2] as f64);
        put(out, m::FS_WRITES, sums[3] as f64);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path) {
        let files = [
            ("cpu.stat", "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\nnr_periods 20\nnr_throttled 5\nthrottled_usec 250000\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.weight", "100\n"),
            ("memory.current", "52428800\n"),
            ("memory.stat", "anon 41943040\nfile 10485760\nfile_mapped 8192\ninactive_file 6291456\nactive_file 4194304\n"),
            ("memory.swap.current", "0\n"),
            ("memory.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
            ("io.stat", "8:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"),
            ("pids.current", "3\n"),
            ("pids.max", "4096\n"),
            ("cgroup.procs", "12\n"),
        ];
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn reads_every_metric_with_cadvisor_units() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("system.slice/docker-abc.scope");
        fixture(&dir);
        let mut out = BTreeMap::new();
        read(&dir, &mut Reader::default(), &mut out);
        let expect = [
            (m::CPU_USAGE, 3.0),
            (m::CPU_USER, 2.0),
            (m::CPU_SYSTEM, 1.0),
            (m::CFS_PERIODS, 20.0),
            (m::CFS_THROTTLED_PERIODS, 5.0),
            (m::CFS_THROTTLED_SECONDS, 0.25),
            (
                m::SPEC_CPU_SHARES,
                2.0 + (99.0 * 262142.0 / 9999.0f64).floor(),
            ),
            (m::MEMORY_USAGE, 52428800.0),
            (m::MEMORY_WORKING_SET, 46137344.0),
            (m::MEMORY_RSS, 41943040.0),
            (m::MEMORY_CACHE, 10485760.0),
            (m::MEMORY_MAPPED_FILE, 8192.0),
            (m::MEMORY_SWAP, 0.0),
            (m::SPEC_MEMORY_LIMIT, 0.0),
            (m::OOM_EVENTS, 1.0),
            (m::FS_READS_BYTES, 1025.0),
            (m::FS_WRITES_BYTES, 2048.0),
            (m::FS_READS, 2.0),
            (m::FS_WRITES, 2.0),
            (m::THREADS, 3.0),
            (m::THREADS_MAX, 4096.0),
            (m::PROCESSES, 1.0),
        ];
        for (name, value) in expect {
            assert_eq!(out.get(name), Some(&value), "{name}");
        }
        assert_eq!(out.len(), expect.len(), "{out:?}");
    }

    #[test]
    fn cpu_quota_and_memory_limit_when_set() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c");
        fixture(&dir);
        std::fs::write(dir.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(dir.join("memory.max"), "33554432\n").unwrap();
        let mut out = BTreeMap::new();
        read(&dir, &mut Reader::default(), &mut out);
        assert_eq!(out.get(m::SPEC_CPU_QUOTA), Some(&50000.0));
        assert_eq!(out.get(m::SPEC_CPU_PERIOD), Some(&100000.0));
        assert_eq!(out.get(m::SPEC_MEMORY_LIMIT), Some(&33554432.0));
    }

    #[test]
    fn missing_files_skip_only_their_metrics() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c");
        fixture(&dir);
        for f in ["memory.stat", "memory.events", "io.stat", "pids.max"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        let mut out = BTreeMap::new();
        read(&dir, &mut Reader::default(), &mut out);
        assert_eq!(out.get(m::MEMORY_USAGE), Some(&52428800.0));
        assert_eq!(out.get(m::CPU_USAGE), Some(&3.0));
        for gone in [
            m::MEMORY_WORKING_SET,
            m::MEMORY_RSS,
            m::OOM_EVENTS,
            m::FS_READS_BYTES,
            m::THREADS_MAX,
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let mut out = BTreeMap::new();
        read(&dir, &mut Reader::default(), &mut out);
        assert!(out.is_empty());
    }
}
