//! The agent's hot-path JSON writer for [`LogRecord`]s.
//!
//! It writes exactly the bytes `serde_json::to_writer` writes for a record (a test holds it to
//! that), about three times faster: field names are literals, and strings are scanned eight bytes
//! at a time for the three things JSON must escape (`"`, `\` and control bytes) instead of one
//! byte at a time. Values that rarely occur (the parser's free-form `fields`) still go through
//! serde_json.

use crate::record::{Container, Kubernetes, LogRecord, Stream};

/// Appends `record` as one JSON object. `extra` writes more members just before the closing
/// brace, each starting with `,` (the object always has members before them); it must not repeat
/// a key the record already has. Its second argument is [`Escapes`] of the message: a piece of
/// the message without any of them can be copied into a JSON string as it is.
pub fn write_log_record(
    out: &mut Vec<u8>,
    record: &LogRecord,
    escapes: &mut Escapes,
    extra: impl FnOnce(&mut Vec<u8>, &Escapes),
) {
    write_record(out, record, escapes, extra, true, Id::AsIs);
}

/// What the writer does with an empty `event.id`, which in a batch stands for the id derived
/// from the record's fingerprint and offset ([`crate::event_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Id {
    /// Writes it as it is (the bytes serde_json writes).
    AsIs,
    /// Writes the derived id (batch versions 1 and 2).
    Derive,
    /// Leaves the member out (batch version 3; the aggregator derives it).
    Omit,
}

/// [`write_log_record`] as a version 1 batch carries it: an empty id is written derived.
pub(crate) fn write_log_record_deriving_id(
    out: &mut Vec<u8>,
    record: &LogRecord,
    escapes: &mut Escapes,
    extra: impl FnOnce(&mut Vec<u8>, &Escapes),
) {
    write_record(out, record, escapes, extra, true, Id::Derive);
}

/// [`write_log_record`] without the fields of the record's source (`log.file`, `container`,
/// `kubernetes`, `host`), which a version 2 batch carries once per source. Returns where, from
/// the record's first byte, `"file":{…},` goes back in (the start of `"offset":`); the rest of
/// the source's fields go right after the `log` object (see [`crate::batch`]). `id` says what
/// becomes of an empty `event.id`.
pub(crate) fn write_log_record_without_source(
    out: &mut Vec<u8>,
    record: &LogRecord,
    escapes: &mut Escapes,
    extra: impl FnOnce(&mut Vec<u8>, &Escapes),
    id: Id,
) -> usize {
    write_record(out, record, escapes, extra, false, id)
}

/// The one record writer; with `source` false it leaves out the source's fields and returns the
/// position of `"offset":` relative to the record's start.
fn write_record(
    out: &mut Vec<u8>,
    record: &LogRecord,
    escapes: &mut Escapes,
    extra: impl FnOnce(&mut Vec<u8>, &Escapes),
    source: bool,
    id: Id,
) -> usize {
    let start = out.len();
    out.extend_from_slice(b"{\"event\":{");
    let mut comma = false;
    if let Some(ingested) = &record.event.ingested {
        out.extend_from_slice(b"\"ingested\":");
        write_str(out, ingested);
        comma = true;
    }
    let derived = record.event.id.is_empty();
    if !(derived && id == Id::Omit) {
        if comma {
            out.push(b',');
        }
        out.extend_from_slice(b"\"id\":");
        if derived && id == Id::Derive {
            let id = crate::event_id(&record.log.file.fingerprint, record.log.offset);
            write_str(out, &id);
        } else {
            write_str(out, &record.event.id);
        }
        comma = true;
    }
    if let Some(created) = &record.event.created {
        if comma {
            out.push(b',');
        }
        out.extend_from_slice(b"\"created\":");
        write_str(out, created);
    }
    out.extend_from_slice(b"},\"@timestamp\":");
    write_str(out, &record.timestamp);
    out.extend_from_slice(b",\"message\":");
    escapes.positions.clear();
    write_str_noting(out, &record.message, Some(&mut escapes.positions));
    if let Some(stream) = record.stream {
        out.extend_from_slice(match stream {
            Stream::Stdout => b",\"stream\":\"stdout\"",
            Stream::Stderr => b",\"stream\":\"stderr\"",
        });
    }
    out.extend_from_slice(b",\"log\":{");
    if let Some(level) = &record.log.level {
        out.extend_from_slice(b"\"level\":");
        write_str(out, level);
        out.push(b',');
    }
    if source {
        write_file_member(out, &record.log.file.path, &record.log.file.fingerprint);
    }
    let offset_at = out.len() - start;
    out.extend_from_slice(b"\"offset\":");
    write_u64(out, record.log.offset);
    if !record.log.flags.is_empty() {
        out.extend_from_slice(b",\"flags\":[");
        for (i, flag) in record.log.flags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(flag.as_str().as_bytes());
            out.push(b'"');
        }
        out.push(b']');
    }
    out.push(b'}');
    if source {
        write_source_members(
            out,
            &record.container,
            &record.kubernetes,
            &record.host.name,
        );
    }
    for (key, value) in &record.fields {
        out.push(b',');
        write_str(out, key);
        out.push(b':');
        serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
    }
    extra(out, escapes);
    out.push(b'}');
    offset_at
}

/// `"file":{"path":…,"fingerprint":…},`: a record's `log.file`, as the first member of `log`
/// before `"offset"`.
pub(crate) fn write_file_member(out: &mut Vec<u8>, path: &str, fingerprint: &str) {
    out.extend_from_slice(b"\"file\":{\"path\":");
    write_str(out, path);
    out.extend_from_slice(b",\"fingerprint\":");
    write_str(out, fingerprint);
    out.extend_from_slice(b"},");
}

/// `,"container":{…},"kubernetes":{…},"host":{…}` (the first two only when not empty): the
/// members that follow a record's `log` object.
pub(crate) fn write_source_members(
    out: &mut Vec<u8>,
    container: &Container,
    kubernetes: &Kubernetes,
    host: &str,
) {
    if !container.is_empty() {
        write_container(out, container);
    }
    if !kubernetes.is_empty() {
        write_kubernetes(out, kubernetes);
    }
    out.extend_from_slice(b",\"host\":{\"name\":");
    write_str(out, host);
    out.push(b'}');
}

/// Writes `,"key":"value"` members of an object whose `{` was just written: the first member
/// gets no comma.
struct Members<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Members<'a> {
    fn open(out: &'a mut Vec<u8>, key: &[u8]) -> Self {
        out.extend_from_slice(key);
        out.push(b'{');
        Members { out, first: true }
    }

    fn key(&mut self, key: &[u8]) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(key);
    }

    fn str(&mut self, key: &[u8], value: &Option<String>) {
        if let Some(v) = value {
            self.key(key);
            write_str(self.out, v);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn write_container(out: &mut Vec<u8>, c: &Container) {
    let mut m = Members::open(out, b",\"container\":");
    m.str(b"\"id\":", &c.id);
    m.str(b"\"name\":", &c.name);
    if !c.image.is_empty() {
        m.key(b"\"image\":");
        let mut image = Members::open(m.out, b"");
        image.str(b"\"name\":", &c.image.name);
        image.close();
    }
    if !c.labels.is_empty() {
        m.key(b"\"labels\":");
        let mut labels = Members::open(m.out, b"");
        for (k, v) in &c.labels {
            if !labels.first {
                labels.out.push(b',');
            }
            labels.first = false;
            write_str(labels.out, k);
            labels.out.push(b':');
            write_str(labels.out, v);
        }
        labels.close();
    }
    m.close();
}

fn write_kubernetes(out: &mut Vec<u8>, k: &Kubernetes) {
    let mut m = Members::open(out, b",\"kubernetes\":");
    m.str(b"\"namespace\":", &k.namespace);
    if !k.pod.is_empty() {
        m.key(b"\"pod\":");
        let mut pod = Members::open(m.out, b"");
        pod.str(b"\"name\":", &k.pod.name);
        pod.str(b"\"uid\":", &k.pod.uid);
        pod.close();
    }
    if !k.container.is_empty() {
        m.key(b"\"container\":");
        let mut container = Members::open(m.out, b"");
        container.str(b"\"name\":", &k.container.name);
        container.close();
    }
    m.close();
}

/// Appends an unsigned integer in decimal.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a signed integer in decimal.
#[inline]
pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

const LANES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of the eight in `w` that is `"`, `\` or below 0x20 (byte 0 is the
/// lowest). Each test is the classic "has a zero byte" bit trick, which never misses one; a byte
/// just above a flagged one may be flagged too (the subtraction borrows), so a flag is a
/// candidate to check, not a verdict.
fn escape_bits(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(LANES) & !v & HIGH;
    let control = w.wrapping_sub(LANES * 0x20) & !w & HIGH;
    zero(w ^ (LANES * u64::from(b'"'))) | zero(w ^ (LANES * u64::from(b'\\'))) | control
}

fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("eight bytes"))
}

/// Where the message of the last record written had bytes that JSON escapes (reused buffer).
#[derive(Debug, Default, Clone)]
pub struct Escapes {
    positions: Vec<usize>,
}

impl Escapes {
    /// Whether `message[start..end]` holds none of the escaped bytes.
    #[inline]
    pub fn plain(&self, start: usize, end: usize) -> bool {
        let first_at_or_after = self.positions.partition_point(|&p| p < start);
        self.positions
            .get(first_at_or_after)
            .is_none_or(|&p| p >= end)
    }
}

/// Appends `s` as a JSON string, escaped the way serde_json escapes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_str_noting(out, s, None);
}

/// [`write_str`], noting the position of every escaped byte.
fn write_str_noting(out: &mut Vec<u8>, s: &str, mut escaped: Option<&mut Vec<usize>>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0; // first byte not yet copied
    let mut i = 0;
    while i < bytes.len() {
        let (w, n) = match bytes.get(i..i + 8) {
            Some(eight) => {
                // Sixteen bytes a turn while nothing needs escaping.
                if let Some(next) = bytes.get(i + 8..i + 16) {
                    if escape_bits(word(eight)) | escape_bits(word(next)) == 0 {
                        i += 16;
                        continue;
                    }
                }
                (word(eight), 8)
            }
            // The last one to seven bytes, in a word padded with bytes that need no escaping:
            // one test, not one call a byte.
            None => {
                let mut padded = [b'a'; 8];
                padded[..bytes.len() - i].copy_from_slice(&bytes[i..]);
                (word(&padded), bytes.len() - i)
            }
        };
        // Then the flagged bytes, lowest first. A byte just above a flagged one can be flagged
        // too (the subtraction borrows), so each is checked; none is ever missed. Flags past the
        // end of the text (on padding) are dropped.
        let mut bits = escape_bits(w) & lanes(n);
        while bits != 0 {
            let j = i + (bits.trailing_zeros() / 8) as usize;
            bits &= bits - 1;
            escape_at(out, bytes, j, &mut start, escaped.as_deref_mut());
        }
        i += n;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The bits of a word's first `n` bytes (`n` ≤ 8).
fn lanes(n: usize) -> u64 {
    u64::MAX >> (64 - 8 * n)
}

/// Escapes `bytes[j]` if JSON needs it: copies what lies before it since `start` and its escape.
#[inline]
fn escape_at(
    out: &mut Vec<u8>,
    bytes: &[u8],
    j: usize,
    start: &mut usize,
    escaped: Option<&mut Vec<usize>>,
) {
    let b = bytes[j];
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        0x00..=0x1f => 0,
        _ => return,
    };
    out.extend_from_slice(&bytes[*start..j]);
    *start = j + 1;
    if let Some(positions) = escaped {
        positions.push(j);
    }
    if short == 0 {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]);
    } else {
        out.extend_from_slice(&[b'\\', short]);
    }
}

fn needs_escape_byte(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Appends `s` as a JSON string as it is: only for text known to need no escaping (a piece of
/// the message that [`Escapes::plain`] vouches for).
#[inline]
pub fn write_plain_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!s.bytes().any(needs_escape_byte), "{s:?} needs escaping");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::*;

    fn random_string(rng: &mut fastrand::Rng) -> String {
        let alphabet: Vec<char> = "ab \"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é€😀/<>&'"
            .chars()
            .collect();
        (0..rng.usize(0..40))
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect()
    }

    pub(crate) fn random_record(rng: &mut fastrand::Rng) -> LogRecord {
        let opt = |rng: &mut fastrand::Rng| rng.bool().then(|| random_string(rng));
        let mut fields = serde_json::Map::new();
        for _ in 0..rng.usize(0..3) {
            fields.insert(
                random_string(rng),
                serde_json::json!({"a": [1, 2.5, null, true], "b": random_string(rng)}),
            );
        }
        let flags = Flag::ALL;
        LogRecord {
            event: Event {
                ingested: opt(rng),
                id: random_string(rng),
                created: opt(rng),
            },
            timestamp: random_string(rng),
            message: random_string(rng),
            stream: [None, Some(Stream::Stdout), Some(Stream::Stderr)][rng.usize(..3)],
            log: LogMeta {
                level: opt(rng),
                file: LogFile {
                    path: random_string(rng),
                    fingerprint: random_string(rng),
                },
                offset: rng.u64(..),
                flags: (0..rng.usize(0..3))
                    .map(|_| flags[rng.usize(..flags.len())])
                    .collect(),
            },
            container: Container {
                id: opt(rng),
                name: opt(rng),
                image: ContainerImage { name: opt(rng) },
                labels: (0..rng.usize(0..3))
                    .map(|_| (random_string(rng), random_string(rng)))
                    .collect(),
            },
            kubernetes: Kubernetes {
                namespace: opt(rng),
                pod: KubernetesPod {
                    name: opt(rng),
                    uid: opt(rng),
                },
                container: KubernetesContainer { name: opt(rng) },
            },
            host: Host {
                name: random_string(rng),
            },
            fields,
        }
    }

    #[test]
    fn writes_the_bytes_serde_json_writes() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut out = Vec::new();
        for _ in 0..5_000 {
            let record = random_record(&mut rng);
            out.clear();
            write_log_record(&mut out, &record, &mut Escapes::default(), |_, _| {});
            let expected = serde_json::to_vec(&record).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn strings_escape_like_serde_json_at_every_alignment() {
        let mut out = Vec::new();
        for b in 0u8..=0x7f {
            for pad in 0..17 {
                let s = format!("{}{}{}", "x".repeat(pad), b as char, "y".repeat(pad % 5));
                out.clear();
                write_str(&mut out, &s);
                assert_eq!(
                    out,
                    serde_json::to_vec(&s).unwrap(),
                    "byte {b:#x} after {pad}"
                );
            }
        }
    }

    /// Random strings dense in bytes to escape (runs of them, multi-byte characters between):
    /// the bytes serde_json writes, and every escaped byte noted once, in order.
    #[test]
    fn dense_escapes_write_what_serde_json_writes_and_note_every_position() {
        let alphabet = [
            '"', '\\', '\n', '\u{1}', '\u{1f}', 'a', 'é', '€', '\t', ' ', '\u{7f}',
        ];
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut out = Vec::new();
        let mut positions = Vec::new();
        for len in 0..200 {
            let s: String = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    alphabet[(rng % alphabet.len() as u64) as usize]
                })
                .collect();
            out.clear();
            positions.clear();
            write_str_noting(&mut out, &s, Some(&mut positions));
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
            let expected: Vec<usize> = s
                .bytes()
                .enumerate()
                .filter(|&(_, b)| needs_escape_byte(b))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(positions, expected, "{s:?}");
        }
    }

    #[test]
    fn extra_members_go_before_the_closing_brace() {
        let record = LogRecord::default();
        let mut out = Vec::new();
        write_log_record(&mut out, &record, &mut Escapes::default(), |out, _| {
            out.extend_from_slice(b",\"x\":1")
        });
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["x"], 1);
        assert_eq!(value["host"]["name"], "");
    }
}
