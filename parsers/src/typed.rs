//! A rule's fields without a map: typed values in slots, written straight into the batch.
//!
//! On the agent's hot path a matched rule does not build `serde_json` objects. Each capture that
//! targets a field leaves a [`Typed`] value in its slot (a string is just the span of the line
//! it came from), and [`FieldTree::write`] writes the slots as nested JSON members, following a
//! tree of pre-escaped keys built once when the rule compiles. Which members a record gets
//! depends only on which slots hold a value, so the tree is walked once for each such set and
//! the result kept as a [`Layout`] (the keys and punctuation as one text, and where each value
//! goes): a record of a known set costs a copy per piece and a write per value.
//! [`Slots::materialize`] turns the same slots into `record.fields` for everything else (`ferry
//! parse`, tests): both ways go through the same conversion, so they cannot disagree.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Number, Value};

use crate::field::{insert, CaptureSpec, FieldPath, Target};
use crate::level::LEVEL_NORMALIZED;
use crate::time::TimeCache;
use ferry_wire::Escapes;

/// One converted capture value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Typed {
    /// `text[start..end]` of the line the rule matched (see [`Slots::text`]).
    Span(usize, usize),
    /// A value that is not a span of the line (mapped or unescaped).
    Owned(String),
    /// A fixed text that needs no JSON escaping (a normalised level).
    Static(&'static str),
    Int(i64),
    /// Always finite.
    Float(f64),
    Bool(bool),
}

impl Typed {
    pub(crate) fn to_value(&self, text: &str) -> Value {
        match self {
            Typed::Span(s, e) => Value::String(text[*s..*e].to_owned()),
            Typed::Owned(s) => Value::String(s.clone()),
            Typed::Static(s) => Value::String((*s).to_owned()),
            Typed::Int(n) => Value::from(*n),
            Typed::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Typed::Bool(b) => Value::Bool(*b),
        }
    }

    /// `escapes`: where `text` needs JSON escaping, when known.
    fn write(&self, text: &str, escapes: Option<&Escapes>, out: &mut Vec<u8>) {
        match self {
            Typed::Span(s, e) if escapes.is_some_and(|x| x.plain(*s, *e)) => {
                ferry_wire::write_plain_str(out, &text[*s..*e])
            }
            Typed::Span(s, e) => {
                ferry_wire::write_str(out, &text[*s..*e]);
            }
            Typed::Owned(s) => {
                ferry_wire::write_str(out, s);
            }
            Typed::Static(s) => ferry_wire::write_plain_str(out, s),
            Typed::Int(n) => ferry_wire::write_i64(out, *n),
            Typed::Float(_) => serde_json::to_writer(&mut *out, &self.to_value(text))
                .expect("writing to a Vec cannot fail"),
            Typed::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }
}

/// The values a rule left for one record, by capture index, and the text their spans refer to.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    values: Vec<Option<Typed>>,
    /// Bit `min(i, 63)` is set when slot `i` holds a value.
    present: u64,
    /// The matched line, when the rule replaced the message (otherwise spans refer to it).
    original: String,
    moved: bool,
    /// The last time each capture parsed, kept across records.
    pub times: TimeCache,
    /// The record's `@timestamp` as its time capture gave it (valid while the rule applies).
    pub(crate) time: String,
    /// A buffer for the next `@timestamp` that moves the read time to `event.created`.
    pub(crate) spare: String,
    /// The layouts of the last sets of present slots written.
    layouts: Layouts,
}

/// How many layouts a [`Slots`] keeps (a rule whose optional captures vary line by line needs
/// one per combination seen; a few cover a log's usual lines).
const LAYOUTS: usize = 8;

/// The members a [`FieldTree`] writes for one set of present slots: `text` holds every key,
/// brace and comma; after `text[..end]` of each step comes the value of its slot.
#[derive(Debug, Default)]
struct Layout {
    tree: u64,
    present: u64,
    text: Vec<u8>,
    steps: Vec<(usize, usize)>,
}

#[derive(Debug, Default)]
struct Layouts {
    kept: Vec<Layout>,
    /// The next kept layout to replace once all are in use.
    next: usize,
    /// For a tree whose presence bits are not exact: built for each record, never kept.
    unkept: Layout,
}

impl Slots {
    /// Empties the slots for a rule with `n` captures.
    pub(crate) fn reset(&mut self, n: usize) {
        self.values.clear();
        self.values.resize(n, None);
        self.present = 0;
        self.moved = false;
    }

    /// Puts capture `i`'s value in its slot.
    #[inline]
    pub(crate) fn set(&mut self, i: usize, value: Typed) {
        self.values[i] = Some(value);
        self.present |= bit(i);
    }

    /// Keeps the matched line before the message is replaced (when a span may refer to it).
    pub(crate) fn keep_original(&mut self, line: &str) {
        if self.present == 0 {
            return;
        }
        self.original.clear();
        self.original.push_str(line);
        self.moved = true;
    }

    /// The text the spans refer to, given the record's current message.
    pub(crate) fn text<'a>(&'a self, message: &'a str) -> &'a str {
        if self.moved {
            &self.original
        } else {
            message
        }
    }

    /// Inserts every value into `fields` (the map form of [`FieldTree::write`]).
    pub(crate) fn materialize(
        &self,
        captures: &[CaptureSpec],
        message: &str,
        fields: &mut Map<String, Value>,
    ) {
        let text = self.text(message);
        for (spec, value) in captures.iter().zip(&self.values) {
            match (&spec.target, value) {
                (Target::Field(path), Some(v)) => insert(fields, path, v.to_value(text)),
                (Target::Level, Some(v)) => {
                    fields.insert(LEVEL_NORMALIZED.into(), v.to_value(text));
                }
                _ => {}
            }
        }
    }
}

/// The JSON members a rule's fields make, as a tree of keys written once at load.
#[derive(Debug, Default)]
pub(crate) struct FieldTree {
    top: Vec<Node>,
    /// Unique among the trees of this process: names the tree in a kept [`Layout`].
    id: u64,
    /// Whether every slot has a bit of its own (at most 64 captures), so that the presence
    /// bits say exactly which slots hold a value and can key a kept layout.
    exact: bool,
}

/// Numbers the trees; 0 is no tree's, so a default layout matches none.
static TREES: AtomicU64 = AtomicU64::new(1);

/// The presence bit of slot `i` (slots from 63 on share one: a set bit may then be a false
/// alarm, which only costs writing an object and taking it back).
fn bit(i: usize) -> u64 {
    1 << i.min(63)
}

#[derive(Debug)]
struct Node {
    /// `"key":`, escaped.
    key: Vec<u8>,
    /// The presence bits of every slot at or under this node.
    under: u64,
    name: String,
    /// Capture indices writing this field (a later present one wins, as in the map).
    slots: Vec<usize>,
    children: Vec<Node>,
}

impl FieldTree {
    /// Builds the tree of the captures that target fields (a level capture's slot holds the
    /// normalised level).
    pub(crate) fn new(captures: &[CaptureSpec]) -> FieldTree {
        let mut tree = FieldTree {
            top: Vec::new(),
            id: TREES.fetch_add(1, Ordering::Relaxed),
            exact: captures.len() <= 64,
        };
        for (i, spec) in captures.iter().enumerate() {
            let segments: Vec<&str> = match &spec.target {
                Target::Field(FieldPath::Nested(s)) => s.iter().map(String::as_str).collect(),
                Target::Field(FieldPath::Dotted(d)) => vec![d.as_str()],
                Target::Level => vec![LEVEL_NORMALIZED],
                Target::Message | Target::Timestamp => continue,
            };
            let mut level = &mut tree.top;
            for (depth, seg) in segments.iter().enumerate() {
                let at = match level.iter().position(|n| n.name == *seg) {
                    Some(at) => at,
                    None => {
                        let mut key = Vec::new();
                        ferry_wire::write_str(&mut key, seg);
                        key.push(b':');
                        level.push(Node {
                            key,
                            under: 0,
                            name: (*seg).to_owned(),
                            slots: Vec::new(),
                            children: Vec::new(),
                        });
                        level.len() - 1
                    }
                };
                level[at].under |= bit(i);
                if depth + 1 == segments.len() {
                    level[at].slots.push(i);
                }
                level = &mut level[at].children;
            }
        }
        tree
    }

    /// Appends `,"key":value` for every top-level field with a value (objects only when they
    /// hold something). `escapes`: where the record's message needed JSON escaping.
    pub(crate) fn write(
        &self,
        slots: &mut Slots,
        message: &str,
        escapes: &Escapes,
        out: &mut Vec<u8>,
    ) {
        let Slots {
            values,
            present,
            original,
            moved,
            layouts,
            ..
        } = slots;
        let text = if *moved { &original[..] } else { message };
        // Spans of a replaced message refer to the original line, which was not written.
        let plain = (!*moved).then_some(escapes);
        let layout = layouts.get(self, values, *present);
        let mut from = 0;
        for &(end, slot) in &layout.steps {
            out.extend_from_slice(&layout.text[from..end]);
            values[slot]
                .as_ref()
                .expect("a layout places only slots that hold a value")
                .write(text, plain, out);
            from = end;
        }
        out.extend_from_slice(&layout.text[from..]);
    }

    /// Lays out the members of the slots that hold a value.
    fn lay_out(&self, values: &[Option<Typed>], present: u64, layout: &mut Layout) {
        layout.tree = self.id;
        layout.present = present;
        layout.text.clear();
        layout.steps.clear();
        for node in self.top.iter().filter(|n| n.under & present != 0) {
            layout.text.push(b',');
            if !node.lay_out(values, present, layout) {
                layout.text.pop();
            }
        }
    }
}

impl Layouts {
    /// The layout of `tree` for the slots of `values` that hold a value (`present`, their
    /// bits): a kept one, or one laid out now.
    fn get(&mut self, tree: &FieldTree, values: &[Option<Typed>], present: u64) -> &Layout {
        if !tree.exact {
            tree.lay_out(values, present, &mut self.unkept);
            return &self.unkept;
        }
        if let Some(at) = self
            .kept
            .iter()
            .position(|l| l.tree == tree.id && l.present == present)
        {
            return &self.kept[at];
        }
        let at = if self.kept.len() < LAYOUTS {
            self.kept.push(Layout::default());
            self.kept.len() - 1
        } else {
            let at = self.next;
            self.next = (self.next + 1) % LAYOUTS;
            at
        };
        tree.lay_out(values, present, &mut self.kept[at]);
        &self.kept[at]
    }
}

impl Node {
    /// Lays out `"key":value`; returns false (having added nothing) when it has no value.
    fn lay_out(&self, values: &[Option<Typed>], present: u64, layout: &mut Layout) -> bool {
        if self.children.is_empty() {
            // A later present capture wins, as in the map.
            let Some(&slot) = self.slots.iter().rev().find(|&&i| values[i].is_some()) else {
                return false;
            };
            layout.text.extend_from_slice(&self.key);
            layout.steps.push((layout.text.len(), slot));
            return true;
        }
        let start = layout.text.len();
        layout.text.extend_from_slice(&self.key);
        layout.text.push(b'{');
        let mut any = false;
        for child in self.children.iter().filter(|n| n.under & present != 0) {
            if any {
                layout.text.push(b',');
            }
            if child.lay_out(values, present, layout) {
                any = true;
            } else if any {
                layout.text.pop();
            }
        }
        if any {
            layout.text.push(b'}');
        } else {
            layout.text.truncate(start);
        }
        any
    }
}
