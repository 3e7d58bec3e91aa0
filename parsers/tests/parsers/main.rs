//! Integration tests of the rule engine: the built-in library against its corpora, multiline
//! joining as the agent drives it, random input, and rule-file checking.

mod check;
mod corpus;
mod fuzz;
mod multiline;
mod util;
