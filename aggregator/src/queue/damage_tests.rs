//! Damage at many places of a segment, in both framings, in a sealed segment (found by the
//! reader while draining) and in the newest one (found on open): exactly the damaged entries are
//! lost, every intact entry after them is delivered in order, the damaged bytes are kept aside
//! byte for byte, and only a torn tail is ever cut.

use super::frame::{self, Format};
use super::tests::drain_skipping;
use super::*;

/// Entries in segment 1 (a sealed layout has one more in segment 2).
const ENTRIES: usize = 6;

/// Payloads of different sizes, so that an offset mistake cannot land on another entry.
fn payload(i: usize) -> Vec<u8> {
    format!(
        "{{\"ferry\":1,\"host\":\"h\",\"logs\":1,\"stats\":0}}\n{{\"i\":{i},\"pad\":\"{}\"}}\n",
        "p".repeat(40 + i * 7)
    )
    .into_bytes()
}

/// An undamaged queue: segment files by sequence number and where segment 1's entries start.
struct Pristine {
    format: Format,
    sealed: bool,
    segments: Vec<(u64, Vec<u8>)>,
    payloads: Vec<Vec<u8>>,
    starts: Vec<usize>,
}

impl Pristine {
    fn build(format: Format, sealed: bool) -> Pristine {
        let count = if sealed { ENTRIES + 1 } else { ENTRIES };
        let payloads: Vec<Vec<u8>> = (0..count).map(payload).collect();
        let header = format.header_bytes() as usize;
        let mut starts = Vec::new();
        let mut at = 0;
        for p in &payloads[..ENTRIES] {
            starts.push(at);
            at += header + p.len();
        }
        let segments = match format {
            Format::V2 => {
                // Written by the queue itself; the segment size makes the seventh entry roll.
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("queue");
                let (q, _) = Queue::open(
                    &dir,
                    at as u64,
                    1 << 20,
                    Position::default(),
                    Arc::new(Metrics::default()),
                )
                .unwrap();
                for p in &payloads {
                    q.append(p).unwrap();
                }
                list_segments(&dir)
                    .unwrap()
                    .into_iter()
                    .map(|s| (s, fs::read(segment_path(&dir, s)).unwrap()))
                    .collect::<Vec<_>>()
            }
            Format::V1 => {
                let seg = |ps: &[Vec<u8>]| ps.iter().flat_map(|p| frame::v1_entry(p)).collect();
                let mut out = vec![(1, seg(&payloads[..ENTRIES]))];
                if sealed {
                    out.push((2, seg(&payloads[ENTRIES..])));
                }
                out
            }
        };
        assert_eq!(segments.len(), if sealed { 2 } else { 1 });
        assert_eq!(segments[0].1.len(), at);
        Pristine {
            format,
            sealed,
            segments,
            payloads,
            starts,
        }
    }

    fn end(&self, k: usize) -> usize {
        self.starts[k] + self.format.header_bytes() as usize + self.payloads[k].len()
    }

    fn len_field(&self, k: usize) -> usize {
        self.starts[k]
            + match self.format {
                Format::V1 => 0,
                Format::V2 => 4,
            }
    }
}

/// Changes segment 1's bytes.
type Damage = Box<dyn Fn(&mut [u8])>;

/// One way to damage segment 1, and the entries it destroys.
struct Case {
    name: String,
    lost: Vec<usize>,
    damage: Damage,
}

fn case(name: String, lost: Vec<usize>, damage: impl Fn(&mut [u8]) + 'static) -> Case {
    Case {
        name,
        lost,
        damage: Box::new(damage),
    }
}

fn cases(p: &Pristine) -> Vec<Case> {
    let mut out = Vec::new();
    let header = p.format.header_bytes() as usize;
    for k in [0, 2, ENTRIES - 1] {
        let (start, end) = (p.starts[k], p.end(k));
        for i in 0..header {
            out.push(case(
                format!("entry {k} header byte {i}"),
                vec![k],
                move |b| b[start + i] ^= 0x5a,
            ));
        }
        for (what, at) in [
            ("first", start + header),
            ("middle", (start + header + end) / 2),
            ("last", end - 1),
        ] {
            out.push(case(
                format!("entry {k} {what} payload byte"),
                vec![k],
                move |b| b[at] ^= 0x01,
            ));
        }
        let len_at = p.len_field(k);
        let len = p.payloads[k].len() as u32;
        for (what, value) in [
            ("huge", 0xFFFF_FFF0),
            ("one", 1),
            ("zero", 0),
            ("one more", len + 1),
            ("one less", len - 1),
        ] {
            out.push(case(
                format!("entry {k} length {what}"),
                vec![k],
                move |b| b[len_at..len_at + 4].copy_from_slice(&value.to_le_bytes()),
            ));
        }
        out.push(case(format!("entry {k} zeroed"), vec![k], move |b| {
            b[start..end].fill(0)
        }));
    }
    let (one_end, two_start) = (p.end(1), p.starts[2]);
    out.push(case(
        "end of 1 and start of 2".into(),
        vec![1, 2],
        move |b| {
            b[one_end - 1] ^= 0xff;
            b[two_start] ^= 0xff;
        },
    ));
    let middle = p.starts[3] + header + 10;
    out.push(case("garbage inside entry 3".into(), vec![3], move |b| {
        // xorshift: bytes of every value, the same every run.
        let mut x: u32 = 0x9e37_79b9;
        for byte in &mut b[middle..middle + 40] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *byte = x as u8;
        }
    }));
    out
}

/// Writes `p` with segment 1 damaged by `c` into a fresh queue folder.
fn lay_out(p: &Pristine, c: &Case) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue");
    fs::create_dir_all(&dir).unwrap();
    let mut damaged = p.segments[0].1.clone();
    (c.damage)(&mut damaged);
    assert_ne!(
        damaged, p.segments[0].1,
        "{}: the case damages nothing",
        c.name
    );
    fs::write(segment_path(&dir, p.segments[0].0), &damaged).unwrap();
    for (seq, bytes) in &p.segments[1..] {
        fs::write(segment_path(&dir, *seq), bytes).unwrap();
    }
    (tmp, dir, damaged)
}

fn check(p: &Pristine, c: &Case) {
    let name = format!(
        "{:?} {} / {}",
        p.format,
        if p.sealed { "sealed" } else { "newest" },
        c.name
    );
    let (_tmp, dir, damaged) = lay_out(p, c);
    let header = p.format.header_bytes();
    let last = ENTRIES - 1;
    // Damage to the very last entry of the newest segment is a torn tail.
    let torn = !p.sealed && c.lost.contains(&last);
    let metrics = Arc::new(Metrics::default());
    let (q, start) = Queue::open(
        &dir,
        1 << 20,
        1 << 20,
        Position::default(),
        Arc::clone(&metrics),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let seg1 = fs::metadata(segment_path(&dir, 1)).unwrap().len();
    if torn {
        assert_eq!(seg1, p.starts[c.lost[0]] as u64, "{name}: torn tail cut");
    } else {
        assert_eq!(seg1, damaged.len() as u64, "{name}: nothing cut");
    }
    let queued_at_open = q.queued().0;

    let mut r = q.reader(start);
    let (got, skipped) = drain_skipping(&mut r);
    let want: Vec<Vec<u8>> = (0..p.payloads.len())
        .filter(|i| !c.lost.contains(i))
        .map(|i| p.payloads[i].clone())
        .collect();
    assert_eq!(
        got.iter()
            .map(|g| String::from_utf8_lossy(g).into_owned())
            .collect::<Vec<_>>(),
        want.iter()
            .map(|g| String::from_utf8_lossy(g).into_owned())
            .collect::<Vec<_>>(),
        "{name}: exactly the intact entries, in order"
    );
    let survivors: u64 = want.iter().map(|w| w.len() as u64 + header).sum();
    assert_eq!(
        queued_at_open,
        survivors + skipped,
        "{name}: queued bytes at open"
    );
    let kept: Vec<_> = fs::read_dir(dir.join(DAMAGED_DIR))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    if torn {
        assert_eq!(skipped, 0, "{name}");
        assert!(kept.is_empty(), "{name}: a torn tail is not damage");
        assert_eq!(metrics.queue_damaged_bytes.load(Ordering::Relaxed), 0);
    } else {
        let from = p.starts[c.lost[0]];
        let to = p.end(*c.lost.last().unwrap());
        assert_eq!(skipped, (to - from) as u64, "{name}: skipped bytes");
        assert_eq!(
            metrics.queue_damaged_bytes.load(Ordering::Relaxed),
            skipped,
            "{name}"
        );
        assert_eq!(kept.len(), 1, "{name}: {kept:?}");
        assert_eq!(
            kept[0].file_name().unwrap().to_str().unwrap(),
            format!("{:020}.seg.damaged-{from}", 1),
            "{name}"
        );
        assert_eq!(
            fs::read(&kept[0]).unwrap(),
            damaged[from..to],
            "{name}: kept bytes"
        );
    }
    // The queue goes on working after recovery.
    let more = payload(99);
    q.append(&more).unwrap();
    assert_eq!(
        drain_skipping(&mut r),
        (vec![more], 0),
        "{name}: appended after"
    );
}

#[test]
fn damage_in_a_sealed_segment_loses_only_the_damaged_entries() {
    for format in [Format::V2, Format::V1] {
        let p = Pristine::build(format, true);
        for c in cases(&p) {
            check(&p, &c);
        }
    }
}

#[test]
fn damage_in_the_newest_segment_is_kept_and_only_a_torn_tail_is_cut() {
    for format in [Format::V2, Format::V1] {
        let p = Pristine::build(format, false);
        for c in cases(&p) {
            check(&p, &c);
        }
    }
}

/// What a SIGKILL or power loss leaves after the last complete entry, alone and behind damage
/// in the middle: the tail is cut, every complete entry is kept.
#[test]
fn torn_tails_are_cut_in_both_formats_even_behind_damage() {
    for format in [Format::V2, Format::V1] {
        let p = Pristine::build(format, false);
        let next = payload(7);
        let whole = match format {
            Format::V2 => {
                let at = p.segments[0].1.len() as u64;
                let mut e = frame::header(1, at, &next).to_vec();
                e.extend_from_slice(&next);
                e
            }
            Format::V1 => frame::v1_entry(&next),
        };
        let header = format.header_bytes() as usize;
        let mut garbled = whole.clone();
        let n = garbled.len();
        garbled[header..].fill(0);
        let tails: [(&str, Vec<u8>); 4] = [
            ("three bytes", whole[..3].to_vec()),
            ("a header alone", whole[..header].to_vec()),
            ("half an entry", whole[..n / 2].to_vec()),
            ("a whole entry of zeros", garbled),
        ];
        for (what, tail) in tails {
            for middle_damage in [false, true] {
                let name = format!("{format:?} {what}, damage in the middle: {middle_damage}");
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("queue");
                fs::create_dir_all(&dir).unwrap();
                let mut bytes = p.segments[0].1.clone();
                if middle_damage {
                    bytes[p.starts[2] + header + 1] ^= 0x01;
                }
                let len = bytes.len() as u64;
                bytes.extend_from_slice(&tail);
                fs::write(segment_path(&dir, 1), &bytes).unwrap();
                let (q, start) = open_queue(&dir);
                assert_eq!(
                    fs::metadata(segment_path(&dir, 1)).unwrap().len(),
                    len,
                    "{name}"
                );
                let (got, _) = drain_skipping(&mut q.reader(start));
                let want: Vec<Vec<u8>> = (0..ENTRIES)
                    .filter(|&i| !(middle_damage && i == 2))
                    .map(|i| p.payloads[i].clone())
                    .collect();
                assert_eq!(got, want, "{name}");
            }
        }
    }
}

fn open_queue(dir: &Path) -> (Queue, Position) {
    Queue::open(
        dir,
        1 << 20,
        1 << 20,
        Position::default(),
        Arc::new(Metrics::default()),
    )
    .unwrap()
}

/// Segments written before version 2 are read as they are; new entries go to a new segment,
/// and a consumer position inside the old segment stays valid.
#[test]
fn segments_of_the_earlier_format_are_read_and_new_entries_go_to_a_new_segment() {
    let p = Pristine::build(Format::V1, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue");
    fs::create_dir_all(&dir).unwrap();
    fs::write(segment_path(&dir, 1), &p.segments[0].1).unwrap();
    // The sink had committed the first two entries.
    let committed = Position {
        segment: 1,
        offset: p.starts[2] as u64,
    };
    let (q, start) = Queue::open(
        &dir,
        1 << 20,
        1 << 20,
        committed,
        Arc::new(Metrics::default()),
    )
    .unwrap();
    assert_eq!(start, committed);
    assert_eq!(list_segments(&dir).unwrap(), [1, 2]);
    assert_eq!(fs::read(segment_path(&dir, 1)).unwrap(), p.segments[0].1);
    let more = payload(42);
    q.append(&more).unwrap();
    let mut r = q.reader(start);
    let mut want = p.payloads[2..ENTRIES].to_vec();
    want.push(more.clone());
    assert_eq!(drain_skipping(&mut r), (want, 0));
    let new_segment = fs::read(segment_path(&dir, 2)).unwrap();
    assert_eq!(
        new_segment[..4],
        frame::MAGIC,
        "the new segment is version 2"
    );
}
