//! Severity names: the source's own in `log.level`, and one of six normalised names beside it.
//!
//! `log.level` keeps the name the program wrote, lower-cased (`notice`, `crit`, `warning`,
//! `trace3`, PostgreSQL's `log`), as ECS asks, so nothing the source said is folded away.
//! `log.level_normalized` holds one of `trace`, `debug`, `info`, `warn`, `error`, `fatal` for
//! queries across sources ("every error and worse"), from a rule's own `normalised` table first,
//! then the common names below; a name neither knows gets no normalised field. This module only
//! names levels: it never decides where they come from.

/// The field holding the normalised level (a dotted key under the record's `log` object).
pub const LEVEL_NORMALIZED: &str = "log.level_normalized";

/// The normalised levels, least severe first.
pub(crate) const NORMALISED: [&str; 6] = ["trace", "debug", "info", "warn", "error", "fatal"];

/// The source's level name as `log.level` keeps it: trimmed and lower-cased.
pub(crate) fn source_level(raw: &str) -> String {
    raw.trim().to_ascii_lowercase()
}

/// The normalised level of a common level name (any case), or `None` for a name it does not
/// know. Covers syslog's keywords and RFC 5424 names, the names of the usual logging libraries
/// (log4j, logback, Python, Go's log15/logrus abbreviations `dbug`/`eror`/`crit`, klog's letters).
pub fn normalise_level(name: &str) -> Option<&'static str> {
    let name = name.trim();
    let mut lower = [0u8; 16];
    if name.len() > lower.len() {
        return None;
    }
    for (l, b) in lower.iter_mut().zip(name.bytes()) {
        *l = b.to_ascii_lowercase();
    }
    Some(match &lower[..name.len()] {
        b"t" | b"trc" | b"trac" | b"trace" | b"finest" => "trace",
        b"d" | b"dbg" | b"dbug" | b"debu" | b"debug" | b"fine" | b"finer" => "debug",
        b"i" | b"inf" | b"info" | b"information" | b"informational" | b"notice" | b"config" => {
            "info"
        }
        b"w" | b"wrn" | b"warn" | b"warning" => "warn",
        b"e" | b"err" | b"eror" | b"erro" | b"error" | b"severe" => "error",
        b"f" | b"fata" | b"fatal" | b"crit" | b"critical" | b"alert" | b"emerg" | b"emergency"
        | b"pani" | b"panic" => "fatal",
        _ => return None,
    })
}

/// Syslog severities by code: the keyword `log.level` keeps (as `logger -p` and syslog.conf
/// spell them), RFC 5424's name for `log.syslog.severity.name`, and the normalised level.
pub(crate) const SYSLOG_SEVERITIES: [(&str, &str, &str); 8] = [
    ("emerg", "Emergency", "fatal"),
    ("alert", "Alert", "fatal"),
    ("crit", "Critical", "fatal"),
    ("err", "Error", "error"),
    ("warning", "Warning", "warn"),
    ("notice", "Notice", "info"),
    ("info", "Informational", "info"),
    ("debug", "Debug", "debug"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_normalise_and_unknown_ones_do_not() {
        for (name, want) in [
            ("W", Some("warn")),
            ("Warn", Some("warn")),
            ("WARNING", Some("warn")),
            ("ERR", Some("error")),
            ("eror", Some("error")),
            ("critical", Some("fatal")),
            ("notice", Some("info")),
            (" info ", Some("info")),
            ("Verbose", None),
            ("log", None),
            ("a-name-longer-than-sixteen-bytes", None),
        ] {
            assert_eq!(normalise_level(name), want, "{name}");
        }
    }

    #[test]
    fn syslog_severities_normalise_as_their_keywords_do() {
        for (keyword, name, normalised) in SYSLOG_SEVERITIES {
            assert_eq!(normalise_level(keyword), Some(normalised), "{keyword}");
            assert!(NORMALISED.contains(&normalised), "{name}");
        }
    }
}
