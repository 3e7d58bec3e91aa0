//! A matcher that walks a pattern's preferred path and never backtracks.
//!
//! Log patterns are mostly chains of runs that end at a delimiter the run cannot contain
//! (`[^ ]*` then a space, `[^"]*` then a quote). For such a chain, the path a backtracking
//! search tries first (the longest run, the first alternative that can start) is the match, and
//! walking it costs one table look-up per byte, or less where `memchr` finds the end of a run
//! that at most three bytes end (see [`RunClass`]): on nginx access lines, 2.5 times less than
//! the regex crate's one-pass engine (about 1,000 against 400 MiB/s, captures only; measured by
//! `cargo bench -p ferry-parsers --bench greedy`).
//!
//! [`Greedy::find`] walks that path from the start of the text and gives up wherever it fails,
//! so the caller asks the regex (which then also settles a real miss). When it does answer, the
//! answer is the regex's: every choice on the path is the first the regex prefers among those
//! that can still match. An alternative (or one more turn of a repetition) is passed over only
//! when it cannot match empty and cannot start with the next byte, so the path is the first that
//! a backtracking search would complete: the leftmost-first match, since nothing starts before
//! the start of the text (a greedy matcher exists only for patterns that begin with `^`). It
//! also gives up on a byte outside ASCII where a Unicode class would have to decide, so it never
//! decodes UTF-8; a class that holds every character outside ASCII decides nothing there, and an
//! unbounded run of one takes such bytes as its own (user agents, URLs and messages in any
//! language).
//!
//! A pattern with anything the walk does not follow (a lazy repetition, a capture inside a
//! repetition of more than one turn, a look-around other than `^` and `$`, a repetition of
//! something that can match empty) gets no greedy matcher, and the regex does all its work.

use regex_syntax::hir::{Class, Hir, HirKind, Look};

/// A group that did not take part in the match.
const UNSET: usize = usize::MAX;

/// A class's answer for one byte.
const OUT: u8 = 0;
const IN: u8 = 1;
/// A byte outside ASCII, for a class with members outside ASCII: only decoding could tell.
const UNSURE: u8 = 2;

/// A pattern compiled for the greedy walk.
#[derive(Debug)]
pub(crate) struct Greedy {
    root: Program,
    groups: usize,
}

/// Byte → [`OUT`], [`IN`] or [`UNSURE`].
type Table = Box<[u8; 256]>;
/// Bytes a part of the pattern may start with (outside ASCII: any, when it could).
type Starts = Box<[bool; 256]>;

/// A pattern (or a part of it) as the steps of its path, walked in one loop: sequences and
/// groups are flattened into the list, so only alternations and repetitions walk a program of
/// their own (a recursive walk of the pattern's tree cost a call a step, more than the steps).
type Program = Box<[Node]>;

#[derive(Debug)]
enum Node {
    Literal(Box<[u8]>),
    Class(Table),
    Start,
    End,
    /// A group begins here: its start is noted before its steps are walked. The walk never
    /// backtracks, so a step that fails fails the whole walk, and the slots are then unused.
    Open(usize),
    /// A group ends here.
    Close(usize),
    Alternation(Vec<Branch>),
    /// A greedy repetition of one class.
    Run {
        class: RunClass,
        min: u32,
        max: u32,
    },
    /// A greedy repetition of an alternation whose first branch is a class (`(?:[^"\\]|\\.)*`):
    /// runs over the class, and tries the other branches only where the class stops.
    RunOr {
        class: RunClass,
        others: Vec<Branch>,
        min: u32,
        max: u32,
    },
    /// A greedy repetition of anything else that cannot match empty.
    Repeat {
        sub: Program,
        starts: Starts,
        min: u32,
        max: u32,
    },
}

/// The class of a run, and the bytes that end it when there are at most three (`[^"]`,
/// `[^ \t]`, `[^"\\]`: the delimited fields of log lines), which `memchr` finds many bytes at a
/// time where the table is read one byte a turn.
#[derive(Debug)]
struct RunClass {
    table: Table,
    stops: Stops,
}

#[derive(Debug, Clone, Copy)]
enum Stops {
    One(u8),
    Two(u8, u8),
    Three(u8, u8, u8),
    /// More, or a byte the table cannot judge: the table decides byte by byte.
    Table,
}

impl RunClass {
    /// The class of a repetition `{min,max}`. A class that holds every character outside
    /// ASCII (`[^"]`, `.`) takes bytes outside ASCII as its own in a run with no upper bound
    /// that needs at most one turn: the text is UTF-8, so such a byte is part of a character
    /// the class holds, and the run, which only stops at an ASCII byte, ends on a character
    /// boundary. Counted turns would be bytes, not characters, so a bounded run (`{2,5}`) and a
    /// single class still give up there.
    fn new(class: &Class, min: u32, max: u32) -> RunClass {
        let mut table = table(class);
        if max == u32::MAX && min <= 1 && holds_all_beyond_ascii(class) {
            table[0x80..].fill(IN);
        }
        let ends: Vec<u8> = (0..=u8::MAX)
            .filter(|&b| table[usize::from(b)] != IN)
            .collect();
        let stops = match ends[..] {
            _ if table.contains(&UNSURE) => Stops::Table,
            [a] => Stops::One(a),
            [a, b] => Stops::Two(a, b),
            [a, b, c] => Stops::Three(a, b, c),
            _ => Stops::Table,
        };
        RunClass { table, stops }
    }
}

/// Whether `class` holds every character from U+0080 on.
fn holds_all_beyond_ascii(class: &Class) -> bool {
    match class {
        Class::Unicode(class) => class
            .ranges()
            .iter()
            .any(|r| r.start() <= '\u{80}' && r.end() == char::MAX),
        Class::Bytes(_) => false,
    }
}

#[derive(Debug)]
struct Branch {
    program: Program,
    starts: Starts,
    /// May match empty, so the next byte cannot rule it out.
    nullable: bool,
}

impl Greedy {
    /// Compiles `pattern` (already accepted by `regex::Regex::new`, whose `captures_len` is
    /// `groups`), or `None` when the walk could not follow it.
    pub fn new(pattern: &str, groups: usize) -> Option<Greedy> {
        let hir = regex_syntax::parse(pattern).ok()?;
        if !hir.properties().look_set_prefix().contains(Look::Start) {
            return None;
        }
        Some(Greedy {
            root: program(&hir)?,
            groups,
        })
    }

    /// Walks the preferred path over `text`. On reaching the end of the pattern, fills `slots`
    /// (start and end of each group, [`UNSET`] for groups off the path) and returns true;
    /// returns false when the path fails, which does not mean the regex would.
    pub fn find(&self, text: &[u8], slots: &mut Vec<usize>) -> bool {
        slots.clear();
        slots.resize(2 * self.groups, UNSET);
        match walk(&self.root, text, 0, slots) {
            Some(end) => {
                slots[0] = 0;
                slots[1] = end;
                true
            }
            None => false,
        }
    }
}

/// The span of group `group` in slots filled by [`Greedy::find`].
#[inline]
pub(crate) fn group(slots: &[usize], group: usize) -> Option<(usize, usize)> {
    match slots.get(2 * group) {
        Some(&start) if start != UNSET => Some((start, slots[2 * group + 1])),
        _ => None,
    }
}

/// `hir` compiled into a program of its own.
fn program(hir: &Hir) -> Option<Program> {
    let mut steps = Vec::new();
    compile(hir, &mut steps)?;
    Some(steps.into_boxed_slice())
}

/// Appends the steps of `hir` to `steps`, or `None` when the walk could not follow it.
fn compile(hir: &Hir, steps: &mut Vec<Node>) -> Option<()> {
    let step = match hir.kind() {
        HirKind::Empty => return Some(()),
        HirKind::Literal(literal) => Node::Literal(literal.0.clone()),
        HirKind::Class(class) => Node::Class(table(class)),
        HirKind::Look(Look::Start) => Node::Start,
        HirKind::Look(Look::End) => Node::End,
        HirKind::Look(_) => return None,
        HirKind::Capture(capture) => {
            let index = usize::try_from(capture.index).ok()?;
            steps.push(Node::Open(index));
            compile(&capture.sub, steps)?;
            Node::Close(index)
        }
        HirKind::Concat(items) => {
            return items.iter().try_for_each(|item| compile(item, steps));
        }
        HirKind::Alternation(branches) => {
            Node::Alternation(branches.iter().map(branch).collect::<Option<_>>()?)
        }
        HirKind::Repetition(rep) => {
            if !rep.greedy {
                return None;
            }
            let (min, max) = (rep.min, rep.max.unwrap_or(u32::MAX));
            if let HirKind::Class(class) = rep.sub.kind() {
                steps.push(Node::Run {
                    class: RunClass::new(class, min, max),
                    min,
                    max,
                });
                return Some(());
            }
            let mut starts = Box::new([false; 256]);
            // A turn that may match empty, or captures that a later turn would overwrite, are
            // beyond the walk.
            if starts_of(&rep.sub, &mut starts) || (max > 1 && has_capture(&rep.sub)) {
                return None;
            }
            if let HirKind::Alternation(branches) = rep.sub.kind() {
                if let HirKind::Class(first) = branches[0].kind() {
                    steps.push(Node::RunOr {
                        class: RunClass::new(first, min, max),
                        others: branches[1..].iter().map(branch).collect::<Option<_>>()?,
                        min,
                        max,
                    });
                    return Some(());
                }
            }
            Node::Repeat {
                sub: program(&rep.sub)?,
                starts,
                min,
                max,
            }
        }
    };
    steps.push(step);
    Some(())
}

fn branch(hir: &Hir) -> Option<Branch> {
    let mut starts = Box::new([false; 256]);
    let nullable = starts_of(hir, &mut starts);
    Some(Branch {
        program: program(hir)?,
        starts,
        nullable,
    })
}

fn has_capture(hir: &Hir) -> bool {
    hir.properties().explicit_captures_len() > 0
}

fn table(class: &Class) -> Table {
    let mut table = Box::new([OUT; 256]);
    match class {
        Class::Unicode(class) => {
            for range in class.ranges() {
                for c in range.start()..=range.end().min('\x7f') {
                    table[c as usize] = IN;
                }
            }
            if class.ranges().iter().any(|r| r.end() > '\x7f') {
                table[0x80..].fill(UNSURE);
            }
        }
        // A `str` regex accepts byte classes only where they cannot match outside ASCII.
        Class::Bytes(class) => {
            for range in class.ranges() {
                table[usize::from(range.start())..=usize::from(range.end())].fill(IN);
            }
        }
    }
    table
}

/// Marks in `starts` the bytes `hir` may start with, and returns whether it may match empty
/// (a look-around counts as empty: passable, so never ruled out).
fn starts_of(hir: &Hir, starts: &mut [bool; 256]) -> bool {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => true,
        HirKind::Literal(literal) => match literal.0.first() {
            Some(&b) => {
                starts[usize::from(b)] = true;
                false
            }
            None => true,
        },
        HirKind::Class(class) => {
            for (b, &answer) in table(class).iter().enumerate() {
                starts[b] |= answer != OUT;
            }
            false
        }
        HirKind::Capture(capture) => starts_of(&capture.sub, starts),
        HirKind::Repetition(rep) => starts_of(&rep.sub, starts) || rep.min == 0,
        HirKind::Concat(items) => items.iter().all(|item| starts_of(item, starts)),
        HirKind::Alternation(branches) => branches
            .iter()
            .fold(false, |nullable, b| starts_of(b, starts) | nullable),
    }
}

/// Walks `program` from `at`; the position after it, or `None` to give up.
fn walk(program: &[Node], text: &[u8], mut at: usize, slots: &mut [usize]) -> Option<usize> {
    for step in program {
        at = match step {
            Node::Literal(bytes) => starts_with(&text[at..], bytes).then_some(at + bytes.len())?,
            Node::Class(table) => {
                (text.get(at).map(|&b| table[usize::from(b)]) == Some(IN)).then_some(at + 1)?
            }
            Node::Start => (at == 0).then_some(at)?,
            Node::End => (at == text.len()).then_some(at)?,
            Node::Open(index) => {
                slots[2 * index] = at;
                at
            }
            Node::Close(index) => {
                slots[2 * index + 1] = at;
                at
            }
            Node::Alternation(branches) => walk(choose(branches, text, at)?, text, at, slots)?,
            Node::Run { class, min, max } => {
                let (after, turns) = run(class, text, at, *max)?;
                (turns >= *min).then_some(after)?
            }
            Node::RunOr {
                class,
                others,
                min,
                max,
            } => {
                let mut turns = 0;
                loop {
                    let (after, n) = run(class, text, at, *max - turns)?;
                    (at, turns) = (after, turns + n);
                    if turns == *max {
                        break;
                    }
                    match choose(others, text, at) {
                        Some(other) => {
                            at = walk(other, text, at, slots)?;
                            turns += 1;
                        }
                        None => break,
                    }
                }
                (turns >= *min).then_some(at)?
            }
            Node::Repeat {
                sub,
                starts,
                min,
                max,
            } => {
                let mut turns = 0;
                while turns < *max && text.get(at).is_some_and(|&b| starts[usize::from(b)]) {
                    at = walk(sub, text, at, slots)?;
                    turns += 1;
                }
                (turns >= *min).then_some(at)?
            }
        };
    }
    Some(at)
}

/// Whether `text` begins with `literal`, compared byte by byte: a pattern's literals are a few
/// bytes (` `, `] "`, ` HTTP/`), shorter than the call to `memcmp` that `starts_with` makes.
#[inline]
fn starts_with(text: &[u8], literal: &[u8]) -> bool {
    text.len() >= literal.len() && text.iter().zip(literal).all(|(a, b)| a == b)
}

/// The first branch that may match at `at` (the regex's preference), or `None` when none can.
fn choose<'a>(branches: &'a [Branch], text: &[u8], at: usize) -> Option<&'a [Node]> {
    let next = text.get(at).map(|&b| usize::from(b));
    branches
        .iter()
        .find(|b| b.nullable || next.is_some_and(|n| b.starts[n]))
        .map(|b| &b.program[..])
}

/// Takes up to `max` bytes of `class` from `at`: the position after them and how many, or
/// `None` when a byte it stopped at is one the table cannot judge.
#[inline]
fn run(class: &RunClass, text: &[u8], at: usize, max: u32) -> Option<(usize, u32)> {
    let table = &class.table;
    let limit = if max == u32::MAX {
        text.len()
    } else {
        text.len().min(at.saturating_add(max as usize))
    };
    let scanned = &text[at..limit];
    let stop = match class.stops {
        Stops::One(a) => memchr::memchr(a, scanned),
        Stops::Two(a, b) => memchr::memchr2(a, b, scanned),
        Stops::Three(a, b, c) => memchr::memchr3(a, b, c, scanned),
        Stops::Table => scanned.iter().position(|&b| table[usize::from(b)] != IN),
    };
    let taken = match stop {
        Some(stop) if table[usize::from(scanned[stop])] == UNSURE => return None,
        Some(stop) => stop,
        None => scanned.len(),
    };
    Some((at + taken, u32::try_from(taken).unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    /// Whenever the walk answers on `text`, checks that the regex matches and that every
    /// group's span is the regex's; returns whether the walk answered.
    fn agrees(regex: &Regex, greedy: &Greedy, text: &str, slots: &mut Vec<usize>) -> bool {
        if !greedy.find(text.as_bytes(), slots) {
            return false;
        }
        let caps = regex
            .captures(text)
            .unwrap_or_else(|| panic!("the walk matched {text:?}, `{regex}` does not"));
        for g in 0..regex.captures_len() {
            assert_eq!(
                group(slots, g),
                caps.get(g).map(|m| (m.start(), m.end())),
                "group {g} of `{regex}` on {text:?}"
            );
        }
        true
    }

    fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
        from[rng.usize(..from.len())]
    }

    /// A random pattern over a small alphabet, with the shapes log rules use and some the walk
    /// refuses (lazy repetitions, word boundaries).
    fn pattern(rng: &mut fastrand::Rng, depth: u32) -> String {
        const ATOMS: &[&str] = &[
            "a", "b", "\"", " ", "-", "é", r"\[", r"\]", "ab", r"\\", "1",
        ];
        const CLASSES: &[&str] = &[
            "[^ ]",
            "[^\"]",
            "[a-z]",
            r"\d",
            r#"[^a"]"#,
            ".",
            r"\w",
            "[ -]",
            r"[^\]]",
            "[^é]",
            r#"[^"\\]"#,
            r"\S",
            "[ab]",
            r"\b",
        ];
        const QUANTIFIERS: &[&str] = &[
            "", "", "*", "+", "?", "{2}", "{1,3}", "{0,2}", "*?", "??", "{2,}",
        ];
        let mut out = String::new();
        for _ in 0..rng.usize(1..=4) {
            let atom = match rng.u32(0..10) {
                0..=2 => pick(rng, ATOMS).to_owned(),
                3..=6 => pick(rng, CLASSES).to_owned(),
                7 | 8 if depth > 0 => {
                    let open = pick(rng, &["(", "(?:", "(?P<g>"]);
                    let open = if open == "(?P<g>" {
                        format!("(?P<g{}>", rng.u32(..u32::MAX))
                    } else {
                        open.to_owned()
                    };
                    format!("{open}{})", pattern(rng, depth - 1))
                }
                _ if depth > 0 => {
                    let branches: Vec<String> = (0..rng.usize(2..=3))
                        .map(|_| pattern(rng, depth - 1))
                        .collect();
                    format!("(?:{})", branches.join("|"))
                }
                _ => pick(rng, CLASSES).to_owned(),
            };
            out.push_str(&atom);
            out.push_str(pick(rng, QUANTIFIERS));
        }
        out
    }

    fn text(rng: &mut fastrand::Rng) -> String {
        const CHARS: &[char] = &[
            'a', 'b', '"', ' ', '-', 'é', '[', ']', '1', '\n', 'z', '\\', '€', '😀', '\u{a0}',
        ];
        (0..rng.usize(0..16))
            .map(|_| CHARS[rng.usize(..CHARS.len())])
            .collect()
    }

    #[test]
    fn the_walk_answers_as_the_regex_on_random_patterns() {
        let mut rng = fastrand::Rng::with_seed(20261128);
        let (mut walkable, mut answered, mut slots) = (0, 0, Vec::new());
        for _ in 0..4000 {
            let body = pattern(&mut rng, 2);
            let pattern = format!("^{body}{}", pick(&mut rng, &["", "$"]));
            let Ok(regex) = Regex::new(&pattern) else {
                continue;
            };
            let Some(greedy) = Greedy::new(&pattern, regex.captures_len()) else {
                continue;
            };
            walkable += 1;
            for _ in 0..60 {
                answered += usize::from(agrees(&regex, &greedy, &text(&mut rng), &mut slots));
            }
        }
        // The walk must be exercised, not refused everywhere.
        assert!(walkable > 1000, "{walkable} walkable patterns");
        assert!(answered > 10_000, "{answered} answers");
    }

    /// Runs over a class that holds everything beyond ASCII take text outside ASCII in their
    /// stride (memchr finds their end); bounded runs and single classes still leave it to the
    /// regex, which counts characters, not bytes.
    #[test]
    fn unbounded_runs_walk_over_text_beyond_ascii() {
        let mut slots = Vec::new();
        for (pattern, text, walks) in [
            (
                r#"^"(?P<a>[^"]*)" (?P<b>[^ ]+)$"#,
                "\"é€ 😀\" ü\u{a0}x",
                true,
            ),
            (
                r#"^(?P<a>(?:[^"\\]|\\.)*)"$"#,
                r#"Mozilla/5.0 (Ünïcode \" 😀)""#,
                true,
            ),
            ("^(?P<a>.*)$", "日本語のログ", true),
            ("^(?P<a>[^ ]{2,})$", "é", false),
            ("^(?P<a>[^ ]{1,3})", "éa", false),
            ("^(?P<a>[^ ])", "é", false),
            (r"^(?P<a>\S+)", "ü\u{a0}", false),
        ] {
            let regex = Regex::new(pattern).unwrap();
            let greedy = Greedy::new(pattern, regex.captures_len()).unwrap();
            assert_eq!(
                agrees(&regex, &greedy, text, &mut slots),
                walks,
                "{pattern} on {text:?}"
            );
        }
    }

    #[test]
    fn unfollowable_patterns_get_no_walk() {
        for pattern in [
            "a+",         // not anchored at the start
            "^a*?b",      // lazy
            r"^\bfoo",    // word boundary
            "^(?:(a)b)*", // a capture repeated
            "^(?:a*)*",   // a repetition that may turn empty
            "(?m)^a$",    // line anchors
        ] {
            let regex = Regex::new(pattern).unwrap();
            assert!(
                Greedy::new(pattern, regex.captures_len()).is_none(),
                "{pattern}"
            );
        }
    }

    /// Every built-in rule's pattern on every corpus line, on runs of lines joined as
    /// multiline events, and on those with random damage (bytes dropped, replaced by
    /// delimiters, the line cut short).
    #[test]
    fn the_walk_answers_as_the_regex_on_the_corpora() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let set = crate::RuleSet::builtin();
        assert!(set.rules().len() >= 13, "{} rules", set.rules().len());
        let mut texts = Vec::new();
        for entry in std::fs::read_dir(dir.join("corpus")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "txt") {
                let file = std::fs::read_to_string(&path).unwrap();
                let lines: Vec<&str> = file.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    texts.push((*line).to_owned());
                    for n in 2..=6 {
                        if i + n <= lines.len() {
                            texts.push(lines[i..i + n].join("\n"));
                        }
                    }
                }
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let damaged: Vec<String> = texts
            .iter()
            .flat_map(|t| {
                let chars: Vec<char> = t.chars().collect();
                (0..8)
                    .map(|_| {
                        let mut c = chars.clone();
                        if c.is_empty() {
                            return String::new();
                        }
                        let at = rng.usize(..c.len());
                        match rng.u32(0..4) {
                            0 => {
                                c.remove(at);
                            }
                            1 => c[at] = ['"', ' ', '[', ']', '-', '\\', 'é', ':'][rng.usize(..8)],
                            2 => c.truncate(at),
                            _ => c.insert(at, ['"', ' ', 'x', '\n'][rng.usize(..4)]),
                        }
                        c.into_iter().collect()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut slots = Vec::new();
        let (mut walked, mut all_matches, mut all_answered) = (0, 0, 0);
        for rule in set.rules() {
            let regex = &rule.regex;
            let Some(greedy) = Greedy::new(regex.as_str(), regex.captures_len()) else {
                continue;
            };
            walked += 1;
            let (mut matches, mut answered) = (0, 0);
            for text in texts.iter().chain(&damaged) {
                matches += usize::from(regex.is_match(text));
                answered += usize::from(agrees(regex, &greedy, text, &mut slots));
            }
            if rule.name == "nginx_access" {
                // The pattern the benchmarks rest on: the walk settles it.
                assert!(
                    answered * 100 >= matches * 95,
                    "nginx: {answered} of {matches}"
                );
            }
            all_matches += matches;
            all_answered += answered;
        }
        assert!(walked >= 8, "{walked} built-in patterns walkable");
        assert!(
            all_answered * 4 > all_matches * 3,
            "{all_answered} of {all_matches}"
        );
    }
}
