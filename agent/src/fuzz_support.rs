//! Harness functions for the fuzz targets (`fuzz/`) and for the corpus replay test: each takes
//! arbitrary bytes, drives one of the agent's input-facing parts as the tailer or `ferry agent`
//! does, and panics when an invariant breaks. Not an interface: nothing outside the fuzzing and
//! its replay calls these.

use ferry_wire::Flag;
use serde::Deserialize;

use crate::decode::{Decoded, Decoder, Flags, Format};
use crate::AgentConfig;

/// Docker json-file lines (see [`decode`]).
pub fn docker_lines(data: &[u8]) {
    decode(Format::Docker, data);
}

/// CRI lines (see [`decode`]).
pub fn cri_lines(data: &[u8]) {
    decode(Format::Cri, data);
}

/// The first byte picks `max_line_bytes` (small, so cuts and joins meet often); the rest is a
/// file, cut into lines as the tailer cuts it: at `\n`, each line longer than `max_line_bytes`
/// handed over as its first `max_line_bytes` bytes flagged `truncated`, a last line without
/// `\n` flagged `incomplete`. At the end the file goes away (`flush`).
///
/// Invariants: records leave in strictly increasing offset order; each starts no later than it
/// ends and not before the first byte of a line not yet emitted; no pending partial starts past
/// the line being read; a message is at most `max_line_bytes` long unless invalid UTF-8 was
/// replaced; a timestamp is RFC 3339 in UTC (`…Z`, with a `T`); a flush leaves nothing pending.
fn decode(format: Format, data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let max = 1 + usize::from(selector) * 4;
    let mut decoder = Decoder::new(format, max);
    let mut last: Option<u64> = None;
    let mut check = |d: Decoded<'_>, oldest: u64| {
        assert!(
            d.start <= d.offset,
            "start {} after offset {}",
            d.start,
            d.offset
        );
        assert!(
            d.start >= oldest,
            "start {} before the oldest unsettled line {oldest}",
            d.start
        );
        if let Some(last) = last {
            assert!(d.offset > last, "offset {} after {last}", d.offset);
        }
        last = Some(d.offset);
        if !d.flags.contains(Flag::InvalidUtf8) {
            assert!(
                d.message.len() <= max,
                "message of {} bytes, max_line_bytes {max}",
                d.message.len()
            );
        }
        if let Some(t) = &d.timestamp {
            assert!(
                t.len() > 10 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
                "timestamp {t:?} is not RFC 3339 UTC"
            );
            assert!(
                chrono::DateTime::parse_from_rfc3339(t).is_ok(),
                "timestamp {t:?} does not parse"
            );
        }
        if format == Format::Plain {
            assert!(d.stream.is_none());
        }
    };
    let mut offset = 0u64;
    let mut rest = file;
    while !rest.is_empty() {
        let (line, line_len, mut flags) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], i + 1, Flags::default()),
            None => (rest, rest.len(), Flags::default().with(Flag::Incomplete)),
        };
        let line = if line.len() > max {
            flags.set(Flag::Truncated);
            &line[..max]
        } else {
            line
        };
        let oldest = decoder.pending_start().unwrap_or(offset);
        decoder.push_line(line, offset, flags, |d| check(d, oldest));
        if let Some(start) = decoder.pending_start() {
            assert!(start <= offset, "pending start {start} past line {offset}");
        }
        offset += line_len as u64;
        rest = &rest[line_len..];
    }
    let oldest = decoder.pending_start().unwrap_or(offset);
    decoder.flush(offset, |d| check(d, oldest));
    assert_eq!(decoder.pending_start(), None, "a partial survived flush");
}

/// A configuration file as `ferry agent` reads it (its `[agent]` table), then validated. The
/// token file is not read (the fuzzer must not read the file system); the environment is one
/// fixed variable. Invariant besides not panicking: a table that validates serialises back to
/// TOML that reads as the same configuration.
pub fn agent_config(data: &[u8]) {
    #[derive(Deserialize)]
    struct File {
        agent: Option<AgentConfig>,
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(File {
        agent: Some(mut config),
    }) = toml::from_str::<File>(text)
    else {
        return;
    };
    if config.token_file.is_none() {
        let _ = config.resolve(|name| (name == "NODE_NAME").then(|| "node-1".to_string()));
    }
    let valid = config.validate().is_ok();
    let _ = config.wire_compression();
    if valid {
        let _ = config.batches_urls();
        let text = toml::to_string(&config)
            .unwrap_or_else(|e| panic!("a valid configuration does not serialise: {e}"));
        let back: AgentConfig = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("serialised configuration does not read back: {e}\n{text}"));
        assert_eq!(back, config, "round trip through\n{text}");
    }
}

#[cfg(test)]
mod tests {
    use ferry_wire::fuzz_support::replay_corpus as replay;

    #[test]
    fn corpus_decode_docker_replays() {
        replay("decode_docker", super::docker_lines);
    }

    #[test]
    fn corpus_decode_cri_replays() {
        replay("decode_cri", super::cri_lines);
    }

    #[test]
    fn corpus_agent_config_replays() {
        replay("agent_config", super::agent_config);
    }
}
