//! The `_bulk` request body, as a pure function of the documents: for each one a `create`
//! action naming its target and `_id`, then the document, each line ending in `\n` (the body
//! must end with one). `create` makes a replayed record a 409 instead of a second document,
//! and is the only operation a data stream takes. No network, no state: tested byte for byte.

use std::io::Write as _;

use ferry_wire::write_str;

use super::document::Document;

/// Appends the bulk body of `docs` to `out`.
pub(crate) fn bulk_body<'a>(docs: impl IntoIterator<Item = &'a Document>, out: &mut Vec<u8>) {
    for doc in docs {
        out.extend_from_slice(b"{\"create\":{\"_index\":");
        write_str(out, &doc.index);
        out.extend_from_slice(b",\"_id\":");
        write_str(out, &doc.id);
        out.extend_from_slice(b"}}\n");
        out.extend_from_slice(&doc.source);
        out.push(b'\n');
    }
}

/// Bytes `doc` adds to a bulk body (for sizing requests before building them).
pub(crate) fn body_bytes(doc: &Document) -> usize {
    // `{"create":{"_index":"…","_id":"…"}}\n` + source + `\n`, assuming nothing to escape
    // (targets and ids are validated names and hex); an estimate either way.
    34 + doc.index.len() + doc.id.len() + doc.source.len() + 1
}

/// gzip at level 1: the bulk body as sent with `Content-Encoding: gzip`.
pub(crate) fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8 + 64),
        flate2::Compression::new(1),
    );
    enc.write_all(body).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::super::document::Original;
    use super::*;
    use bytes::Bytes;
    use std::io::Read;

    fn doc(index: &str, id: &str, source: &str) -> Document {
        Document {
            id: id.into(),
            index: index.into(),
            source: Bytes::copy_from_slice(source.as_bytes()),
            original: Original::Bytes(Bytes::new()),
        }
    }

    #[test]
    fn body_is_create_pairs_each_ending_in_a_newline() {
        let docs = [
            doc(
                "logs-ferry-default",
                "5b0c",
                r#"{"event":{"id":"5b0c"},"message":"a"}"#,
            ),
            doc(
                "ferry-2026.11.28",
                "a1c3",
                r#"{"message":"line \"two\"\nstill"}"#,
            ),
        ];
        let mut out = Vec::new();
        bulk_body(&docs, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            concat!(
                "{\"create\":{\"_index\":\"logs-ferry-default\",\"_id\":\"5b0c\"}}\n",
                "{\"event\":{\"id\":\"5b0c\"},\"message\":\"a\"}\n",
                "{\"create\":{\"_index\":\"ferry-2026.11.28\",\"_id\":\"a1c3\"}}\n",
                "{\"message\":\"line \\\"two\\\"\\nstill\"}\n",
            )
        );
        assert_eq!(
            out.len(),
            docs.iter().map(body_bytes).sum::<usize>(),
            "the size estimate is exact when nothing needs escaping"
        );
    }

    #[test]
    fn names_are_json_escaped_and_empty_input_is_empty() {
        let mut out = Vec::new();
        bulk_body(&[doc("a\"b", "x\\y", "{}")], &mut out);
        assert_eq!(
            out,
            b"{\"create\":{\"_index\":\"a\\\"b\",\"_id\":\"x\\\\y\"}}\n{}\n"
        );
        let mut empty = Vec::new();
        bulk_body(&[], &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn gzip_round_trips() {
        let body = b"{\"create\":{}}\n{}\n".repeat(100);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&body)[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, body);
    }
}
