//! Turns a log record's message into structured fields.
//!
//! Today this crate knows two parsers: JSON auto-detect (a message that is a JSON object is merged
//! into the record, with the usual keys recognised) and raw pass-through. The regex rule engine and
//! the built-in rule library build on this. A parser never drops a record: on a miss the message is
//! kept as it was.
#![forbid(unsafe_code)]

mod json;

pub use json::parse_json_message;

use ferry_wire::LogRecord;

/// How the agent treats a record's message.
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
