//! Turns a log record's message into structured fields: regex rules, the built-in rule library,
//! multiline joining, JSON auto-detect. A parser never drops a record: on a miss the message is
//! kept as it was and `parse.error`/`parse.rule` say why.
//!
//! # Choosing the rules for a container ([`RuleSet::select`])
//! 1. the `ferry.parser=<rule>[,<rule>…]` label (passed in by the agent);
//! 2. else every rule whose `image` globs / `image_regex` match the container image, in order
//!    (the nginx image gets `nginx_access,nginx_error`: access lines on stdout, errors on stderr);
//! 3. else auto-detection: JSON objects (`parse_json_message`), then the rules marked
//!    `auto = true` (prefiltered with one `RegexSet`), then the raw message.
//!
//! A miss with an explicit or image rule keeps the raw message and sets
//! `parse = {error, rule}`; a hit sets no `parse.*` at all (unless a value failed to convert,
//! e.g. a time in none of the formats: then the other fields are kept, `@timestamp` stays the
//! read time, and `parse.error` says `timestamp …`). A multiline rule's pattern applies to
//! joined events; single lines of such a container go through auto-detection without error.
//!
//! # Rule files (`parsers/rules/*.toml`, plus directories given at load)
//! ```toml
//! [[rule]]
//! name = "redis"                       # unique; used by the label and in parse.rule
//! description = "Redis server log"
//! image = ["redis", "valkey"]          # globs; without `/` they match the repository name
//! auto = true                          # try on containers without an explicit/image rule
//! pattern = '^(?P<pid>\d+):(?P<role>[XCSM]) (?P<time>\d{1,2} \w{3} \d{4} [\d:.]+) (?P<level>[.*#-]) (?P<message>.*)$'
//! null_values = ["-", ""]              # the default: such captures are absent
//!
//! [rule.captures]
//! pid = { field = "process.pid", type = "int" }
//! role = { field = "redis.log.role", map = { M = "master", S = "replica" } }
//! time = { field = "@timestamp", type = "timestamp", formats = ["%d %b %Y %H:%M:%S%.f"] }
//! level = { field = "log.level", map = { "." = "debug", "-" = "verbose", "*" = "notice", "#" = "warning" }, normalised = { verbose = "debug" } }
//! message = "message"                  # shorthand for a string field
//! ```
//! Types: `string` (default; `unescape = true` undoes `\"`/`\xHH`), `int`, `float`, `bool`,
//! `ip` (validated, kept as text), `timestamp` (`formats`: strftime patterns, `rfc3339`,
//! `epoch_seconds`, `epoch_millis`, `epoch`; no offset = UTC; no year = the read time's year),
//! `syslog_pri` (`log.syslog.*` from `<PRI>`), `kv` (logfmt pairs → fields; text that is not
//! pairs stops the reading and is kept in `logfmt.unparsed`, with `parse.error` saying where).
//! A `[rule.multiline]` block ([`MultilineConfig`]) makes the agent join lines before the
//! pattern runs.
//!
//! # Levels
//! `log.level` keeps the source's own severity name, lower-cased, after the capture's `map`
//! (nginx's `notice`, syslog's `err`, PostgreSQL's `log`); `log.level_normalized` beside it is
//! one of `trace`, `debug`, `info`, `warn`, `error`, `fatal`, from the capture's `normalised`
//! table, then the common names ([`normalise_level`]). A name neither knows has no normalised
//! field. JSON and logfmt levels follow the same rule.
//!
//! # Hot path
//! Rules compile once at load, each pattern twice: for the regex crate and, when it begins
//! with `^` and has no lazy repetition or other look-around, for a greedy walk that follows the
//! regex's preferred path without backtracking and hands the line to the regex wherever that
//! path fails (`greedy.rs`); both give the same groups. [`Selection::apply_typed`] reuses capture locations and value
//! slots from a [`Scratch`]: a rule's fields stay typed values (spans of the line, numbers) that
//! [`Selection::write_fields`] writes straight into the record's JSON, with no map per line.
//! [`Selection::apply`] does the same and then fills `record.fields` from the slots. The message
//! is cut down in place when a capture becomes `message`. Auto-detection first tries the auto
//! rule that read the previous line, taking it only when no earlier auto rule matches.
#![forbid(unsafe_code)]

mod field;
#[doc(hidden)]
pub mod fuzz_support;
mod greedy;
mod json;
mod level;
mod multiline;
mod ops;
mod rule;
mod set;
mod time;
mod typed;

pub use json::parse_json_message;
pub use level::{normalise_level, LEVEL_NORMALIZED};
pub use multiline::{Joined, Line, Multiline, MultilineConfig, MultilineJoiner, Pushed};
pub use ops::{check_rule_files, flatten_record, parse_lines, ParseLinesError, ParseSummary};
pub use rule::{RuleError, RuleErrorKind};
pub use set::{Chosen, Outcome, RuleSet, Scratch, Selection, RAW};

/// The greedy walk alone, for `benches/greedy.rs`, so the walk's speed-up over the regex can be
/// measured by itself. Not part of the API: hidden from the docs, no stability promise.
#[doc(hidden)]
pub mod bench {
    /// A pattern compiled for the greedy walk only: no regex where it gives up, no typed values.
    pub struct Walk(crate::greedy::Greedy);

    impl Walk {
        /// `None` when `pattern` is not a valid regex or the walk cannot follow it.
        pub fn new(pattern: &str) -> Option<Walk> {
            let groups = regex::Regex::new(pattern).ok()?.captures_len();
            crate::greedy::Greedy::new(pattern, groups).map(Walk)
        }

        /// Walks `text` along the preferred path. On success `slots` holds the start and end of
        /// each group (`usize::MAX` for a group off the path), as the regex's capture locations
        /// would; false means the walk gave up, not that the regex would miss.
        pub fn find(&self, text: &[u8], slots: &mut Vec<usize>) -> bool {
            self.0.find(text, slots)
        }
    }
}

use ferry_wire::LogRecord;

/// How the agent treats a record's message when it has no [`RuleSet`] (kept for the agent's
/// current hook; [`Selection::apply`] supersedes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parser {
    /// Leave the message as it is.
    Raw,
    /// If the message is a JSON object, merge it into the record; otherwise leave it.
    #[default]
    JsonAuto,
}

impl Parser {
    /// Applies the parser to `record` in place. Returns whether any field was extracted.
    pub fn apply(self, record: &mut LogRecord) -> bool {
        match self {
            Parser::Raw => false,
            Parser::JsonAuto => parse_json_message(record),
        }
    }
}
