//! The systemd units (`deploy/systemd/*.service`) pass `systemd-analyze verify` with no warning
//! (an unknown or misspelt directive is only a warning to systemd, so any output fails here),
//! with `ExecStart` pointing at the binary under test. Needs systemd's `systemd-analyze`;
//! without it the test fails unless `FERRY_TEST_SKIP_SYSTEMD=1`.

use std::process::Command;

use crate::deploy_docker::repo;
use crate::util::FERRY;

#[test]
fn systemd_units_verify_without_warnings() {
    if std::env::var("FERRY_TEST_SKIP_SYSTEMD").is_ok_and(|v| v == "1") {
        eprintln!("FERRY_TEST_SKIP_SYSTEMD=1: the systemd unit check is skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(repo().join("deploy/systemd"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/ferry "),
            "{name}: ExecStart"
        );
        // The token comes from systemd's credentials, where the README's token_file points.
        let unit = name.trim_end_matches(".service");
        assert!(
            text.contains("LoadCredential=token:/etc/ferry/token"),
            "{name}"
        );
        assert!(
            text.contains(&format!(
                "token_file = \"/run/credentials/{unit}.service/token\""
            )),
            "{name} names the token_file path its credential has"
        );
        let path = dir.path().join(&name);
        std::fs::write(&path, text.replace("/usr/local/bin/ferry", FERRY)).unwrap();
        units.push(path);
    }
    assert_eq!(units.len(), 2, "the agent's and the aggregator's units");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze does not run ({e}); or set FERRY_TEST_SKIP_SYSTEMD=1")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}
