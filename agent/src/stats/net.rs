//! Network counters of a container from `/proc/<pid>/net/dev` (its network namespace), summed
//! over every interface but `lo`.
//!
//! cAdvisor labels these per `interface`; ferry sums them to keep one flat series per container
//! (bounded cardinality, and what dashboards `sum by` anyway). A container that shares the
//! agent's (or the host's) network namespace is skipped: its counters would be the host's.

use std::collections::BTreeMap;
use std::path::Path;

use super::{m, put};

/// The namespace identity `net:[<inode>]` of `<proc>/<pid>/ns/net`, if readable.
pub(crate) fn netns(proc_root: &Path, pid: &str) -> Option<String> {
    std::fs::read_link(proc_root.join(pid).join("ns/net"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Adds the receive/transmit counters of a `net/dev` text to `out`.
pub(crate) fn parse_dev(text: &str, out: &mut BTreeMap<String, f64>) {
    // receive: bytes packets errs drop fifo frame compressed multicast
    // transmit: bytes packets errs drop fifo colls carrier compressed
    let mut sums = [0u64; 8];
    let mut any = false;
    for line in text.lines().skip(2) {
        let Some((iface, fields)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = fields
            .split_ascii_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() < 12 {
            continue;
        }
        any = true;
        for (sum, i) in sums.iter_mut().zip([0, 1, 2, 3, 8, 9, 10, 11]) {
            *sum = sum.saturating_add(f[i]);
        }
    }
    if !any {
        return;
    }
    for (name, value) in [
        m::NET_RX_BYTES,
        m::NET_RX_PACKETS,
        m::NET_RX_ERRORS,
        m::NET_RX_DROPPED,
        m::NET_TX_BYTES,
        m::NET_TX_PACKETS,
        m::NET_TX_ERRORS,
        m::NET_TX_DROPPED,
    ]
    .into_iter()
    .zip(sums)
    {
        put(out, name, value as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    2000      20    1    2    0     0          0         0     3000      30    3    4    0     0       0          0
  eth1:      10       1    0    0    0     0          0         0       20       2    0    0    0     0       0          0
";

    #[test]
    fn sums_every_interface_but_lo() {
        let mut out = BTreeMap::new();
        parse_dev(DEV, &mut out);
        assert_eq!(out[m::NET_RX_BYTES], 2010.0);
        assert_eq!(out[m::NET_RX_PACKETS], 21.0);
        assert_eq!(out[m::NET_RX_ERRORS], 1.0);
        assert_eq!(out[m::NET_RX_DROPPED], 2.0);
        assert_eq!(out[m::NET_TX_BYTES], 3020.0);
        assert_eq!(out[m::NET_TX_PACKETS], 32.0);
        assert_eq!(out[m::NET_TX_ERRORS], 3.0);
        assert_eq!(out[m::NET_TX_DROPPED], 4.0);
    }

    #[test]
    fn only_lo_or_garbage_adds_nothing() {
        let mut out = BTreeMap::new();
        parse_dev(
            &DEV.lines().take(3).collect::<Vec<_>>().join("\n"),
            &mut out,
        );
        parse_dev("", &mut out);
        parse_dev("a\nb\neth0: 1 2\n", &mut out);
        assert!(out.is_empty());
    }
}
