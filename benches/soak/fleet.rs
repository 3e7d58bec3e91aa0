//! The busy containers: `ferry-test` (busybox) shells writing numbered JSON lines to stdout
//! through Docker's json-file driver, paced through a control directory bind-mounted into
//! every one of them (`/ctl/rate`: lines per container per tick), reporting how far they got
//! (`/ctl/n-<name>`) and, once `/ctl/stop` appears, their final count (`/ctl/count-<name>`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::stack::pause;

/// Seconds a container sleeps between two bursts of lines.
pub const TICK_SECONDS: f64 = 0.1;

pub use crate::util::docker_cli as docker;

/// Which lines are written to fail Elasticsearch's mapping: with `bad_every` = B > 0, line `n`
/// of every container when `n >= 100` and `n % B == B - 1` (line 0 of each container always
/// maps `probe` as a keyword first, so the object `probe` of a bad line conflicts).
pub fn is_bad(seq: u64, bad_every: u64) -> bool {
    bad_every > 0 && seq >= 100 && seq % bad_every == bad_every - 1
}

/// The shell loop each container runs (`$NAME`, `$B` and `$T` come from its environment).
const SCRIPT: &str = r#"n=0
while [ ! -e /ctl/stop ]; do
  read r < /ctl/rate
  e=$((n + r))
  while [ $n -lt $e ]; do
    if [ $B -gt 0 ] && [ $n -ge 100 ] && [ $((n % B)) -eq $((B - 1)) ]; then
      echo "{\"msg\":\"soak $NAME $n\",\"probe\":{\"bad\":$n}}"
    else
      echo "{\"msg\":\"soak $NAME $n\",\"probe\":\"ok\"}"
    fi
    n=$((n + 1))
  done
  echo $n > /ctl/n-$NAME
  sleep $T
done
echo $n > /ctl/count-$NAME
"#;

pub struct Fleet {
    pub names: Vec<String>,
    ids: Vec<String>,
    ctl: PathBuf,
    /// The last count each container reported (a read can meet a file being rewritten).
    last: std::cell::RefCell<Vec<u64>>,
}

/// Docker's json-file options: rotate at `max_size`, keep `max_file` files.
pub struct LogOpts {
    pub max_size: String,
    pub max_file: u32,
}

impl Fleet {
    /// Removes containers an earlier, interrupted run left behind (those whose harness
    /// process is gone; another run's live containers are left alone).
    pub fn remove_leftovers() {
        let rows = docker(&[
            "ps",
            "-a",
            "--filter",
            "label=ferry.soak",
            "--format",
            "{{.ID}} {{.Label \"ferry.soak.pid\"}}",
        ]);
        for row in rows.lines() {
            let mut f = row.split_whitespace();
            let (Some(id), pid) = (f.next(), f.next()) else {
                continue;
            };
            if pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
                continue;
            }
            eprintln!("soak: removing a leftover container {id}");
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }

    pub fn start(
        count: usize,
        ctl: &Path,
        label: &str,
        bad_every: u64,
        per_tick: u32,
        log: &LogOpts,
    ) -> Fleet {
        std::fs::create_dir_all(ctl).unwrap();
        let mut fleet = Fleet {
            names: Vec::new(),
            ids: Vec::new(),
            ctl: ctl.to_path_buf(),
            last: std::cell::RefCell::new(vec![0; count]),
        };
        fleet.set_rate(per_tick);
        let lbl = format!("ferry.soak={label}");
        let pid = format!("ferry.soak.pid={}", std::process::id());
        let volume = format!("{}:/ctl", ctl.display());
        for i in 0..count {
            let name = format!("c{i:02}");
            let container = format!("ferry-soak-{label}-{name}");
            let id = docker(&[
                "run",
                "-d",
                "--name",
                &container,
                "--label",
                &lbl,
                "--label",
                &pid,
                "--log-driver",
                "json-file",
                "--log-opt",
                &format!("max-size={}", log.max_size),
                "--log-opt",
                &format!("max-file={}", log.max_file),
                "-v",
                &volume,
                "-e",
                &format!("NAME={name}"),
                "-e",
                &format!("B={bad_every}"),
                "-e",
                &format!("T={TICK_SECONDS}"),
                "ferry-test:latest",
                "sh",
                "-c",
                SCRIPT,
            ]);
            fleet.ids.push(id);
            fleet.names.push(name);
        }
        fleet
    }

    /// Lines per container per tick, from the next tick on.
    pub fn set_rate(&self, per_tick: u32) {
        let tmp = self.ctl.join("rate.tmp");
        std::fs::write(&tmp, format!("{per_tick}\n")).unwrap();
        std::fs::rename(&tmp, self.ctl.join("rate")).unwrap();
    }

    /// Lines written so far, per container (as each last reported it).
    pub fn written(&self) -> Vec<u64> {
        let mut last = self.last.borrow_mut();
        for (n, seen) in self.names.iter().zip(last.iter_mut()) {
            let now: u64 = std::fs::read_to_string(self.ctl.join(format!("n-{n}")))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            *seen = (*seen).max(now);
        }
        last.clone()
    }

    /// Stops every container after its current tick; returns (name, lines written).
    pub fn stop(&self) -> Vec<(String, u64)> {
        std::fs::write(self.ctl.join("stop"), b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut out = Vec::new();
        for name in &self.names {
            let file = self.ctl.join(format!("count-{name}"));
            let n = loop {
                if let Some(n) = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                {
                    break n;
                }
                assert!(
                    Instant::now() < deadline,
                    "container {name} did not report its count"
                );
                pause(Duration::from_millis(100));
            };
            out.push((name.clone(), n));
        }
        for id in &self.ids {
            docker(&["wait", id]);
        }
        out
    }

    /// Each container's json-file path (from `docker inspect`).
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.ids
            .iter()
            .map(|id| PathBuf::from(docker(&["inspect", "-f", "{{.LogPath}}", id])))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}
