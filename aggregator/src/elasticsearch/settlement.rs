//! The settlement table (`shared/ELASTICSEARCH.md`): what each answer of Elasticsearch means for
//! the documents of a bulk request, and the reading of a bulk response back onto them, item by
//! item in request order. Pure functions: no network, no state.
//!
//! | answer | verdict |
//! |---|---|
//! | item 200/201 | indexed |
//! | item 409 (`create` on an existing `_id`) | duplicate: already indexed, settled |
//! | item 429, 5xx (and any unexpected status) | retried alone, after a backoff |
//! | item other 4xx (mapping, parsing, index name) | dead letter, with the reason |
//! | request 200 | read the items |
//! | request 413, 400 | split in halves (a single document: dead letter) |
//! | request 429, 401/403, other | retried after a backoff |
//! | request 5xx, connection error, time-out | retried after a backoff, on another node if any |
//! | request 200 whose items do not match | retried whole (409s make it safe) |

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::sink_metrics::BulkOutcome;

/// What happens to one document, from its item's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemVerdict {
    Indexed,
    Duplicate,
    Retry,
    DeadLetter,
}

pub(crate) fn item_verdict(status: u16) -> ItemVerdict {
    match status {
        200..=299 => ItemVerdict::Indexed,
        409 => ItemVerdict::Duplicate,
        429 => ItemVerdict::Retry,
        400..=499 => ItemVerdict::DeadLetter,
        // 5xx, and anything Elasticsearch does not answer: never dropped.
        _ => ItemVerdict::Retry,
    }
}

/// What happens to a whole request, from its HTTP status (`None`: no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestVerdict {
    /// Read the per-item answers.
    Items,
    /// Send the documents again in two halves; a single document is dead-lettered.
    Split,
    /// Send the same documents again after a backoff; `node_down` leaves the node out for a
    /// while so the retry goes to another one.
    Retry { node_down: bool },
}

pub(crate) fn request_verdict(status: Option<u16>) -> (RequestVerdict, BulkOutcome) {
    let retry = |node_down| RequestVerdict::Retry { node_down };
    match status {
        None => (retry(true), BulkOutcome::Connection),
        Some(200) => (RequestVerdict::Items, BulkOutcome::Ok),
        Some(413) => (RequestVerdict::Split, BulkOutcome::TooLarge),
        Some(400) => (RequestVerdict::Split, BulkOutcome::BadRequest),
        Some(401 | 403) => (retry(false), BulkOutcome::Unauthorized),
        Some(429) => (retry(false), BulkOutcome::Rejected),
        Some(500..=599) => (retry(true), BulkOutcome::Unavailable),
        Some(_) => (retry(false), BulkOutcome::OtherStatus),
    }
}

/// One item of a bulk response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ItemAnswer<'a> {
    pub(crate) status: u16,
    /// The item's `error` object, as sent.
    pub(crate) error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    items: Option<Vec<OneItem<'a>>>,
}

/// `{"<op>": {…}}`.
#[derive(Deserialize)]
struct OneItem<'a> {
    #[serde(borrow, default)]
    create: Option<Item<'a>>,
    #[serde(borrow, default)]
    index: Option<Item<'a>>,
    #[serde(borrow, default)]
    update: Option<Item<'a>>,
    #[serde(borrow, default)]
    delete: Option<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "_id", borrow, default)]
    id: Option<Cow<'a, str>>,
    status: u16,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The `filter_path` the sink asks for: every item keeps its `_id` and `status` (so positions
/// still match the request) and failed ones their `error`; the rest of a success is dropped.
pub(crate) const FILTER_PATH: &str = "items.*._id,items.*.status,items.*.error";

/// Reads a 200 bulk response onto the request's documents (`ids`, in request order). Refuses
/// an answer that does not match: another number of items, or an item naming another `_id`.
pub(crate) fn read_items<'a, 'i>(
    body: &'a [u8],
    ids: impl ExactSizeIterator<Item = &'i str> + Clone,
) -> Result<Vec<ItemAnswer<'a>>, String> {
    match read_plain_items(body, ids.clone()) {
        Some(answers) => Ok(answers),
        None => parse_items(body, ids),
    }
}

/// [`read_items`] with a JSON parser: any shape of answer, every mismatch named.
fn parse_items<'a, 'i>(
    body: &'a [u8],
    ids: impl ExactSizeIterator<Item = &'i str>,
) -> Result<Vec<ItemAnswer<'a>>, String> {
    let response: Response<'a> =
        serde_json::from_slice(body).map_err(|e| format!("unreadable bulk response: {e}"))?;
    let items = response.items.unwrap_or_default();
    if items.len() != ids.len() {
        return Err(format!(
            "bulk response has {} items for {} documents",
            items.len(),
            ids.len()
        ));
    }
    items
        .into_iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (one, id))| {
            let item = one
                .create
                .or(one.index)
                .or(one.update)
                .or(one.delete)
                .ok_or_else(|| format!("bulk response item {i} names no operation"))?;
            if let Some(answered) = &item.id {
                if answered != id {
                    return Err(format!(
                        "bulk response item {i} is for _id {answered:?}, the request sent {id:?}"
                    ));
                }
            }
            Ok(ItemAnswer {
                status: item.status,
                error: item.error,
            })
        })
        .collect()
}

/// The answer read without a JSON parser when it has the shape Elasticsearch gives, under
/// [`FILTER_PATH`], to a request none of whose items carries an `error` (every one indexed, as
/// nearly all are): `{"items":[`, then for each document in request order
/// `{"create":{"_id":"<its id>","status":<3 digits>}}` (or `"index"`), commas between, then
/// `]}`, byte for byte. `None` for any other body, which serde then reads and judges: the
/// answers are the same either way. A bulk answers one item per document, so this is on every
/// document's path (the parser took about 9 % of the aggregator into Elasticsearch).
fn read_plain_items<'a, 'i>(
    body: &[u8],
    ids: impl ExactSizeIterator<Item = &'i str>,
) -> Option<Vec<ItemAnswer<'a>>> {
    let mut rest = body.strip_prefix(b"{\"items\":[")?;
    let mut answers = Vec::with_capacity(ids.len());
    for (i, id) in ids.enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(b",")?;
        }
        rest = rest
            .strip_prefix(b"{\"create\":{\"_id\":\"")
            .or_else(|| rest.strip_prefix(b"{\"index\":{\"_id\":\""))?;
        // An id JSON would escape reads differently in the answer: the parser compares it.
        if id.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            return None;
        }
        rest = rest
            .strip_prefix(id.as_bytes())?
            .strip_prefix(b"\",\"status\":")?;
        let (digits, after) = rest.split_first_chunk::<3>()?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let status = digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        rest = after.strip_prefix(b"}}")?;
        answers.push(ItemAnswer {
            status,
            error: None,
        });
    }
    (rest == b"]}").then_some(answers)
}

/// `type: reason` of an error object (item-level `error`, or a whole-request body's `error`,
/// which may also be a plain string).
pub(crate) fn error_text(error: &str) -> String {
    #[derive(Deserialize)]
    struct Details {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Error {
        Text(String),
        Object(Details),
    }
    #[derive(Deserialize)]
    struct Body {
        error: Error,
    }
    let details = match serde_json::from_str::<Body>(error) {
        Ok(Body {
            error: Error::Text(text),
        }) => return text,
        Ok(Body {
            error: Error::Object(d),
        }) => d,
        Err(_) => match serde_json::from_str::<Details>(error) {
            Ok(d) if d.kind.is_some() || d.reason.is_some() => d,
            _ => return error.chars().take(300).collect(),
        },
    };
    match (details.kind, details.reason) {
        (Some(k), Some(r)) => format!("{k}: {r}"),
        (Some(k), None) => k,
        (None, Some(r)) => r,
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_table_case_by_case() {
        use ItemVerdict::*;
        for (status, verdict) in [
            (201, Indexed),
            (200, Indexed),
            (409, Duplicate),
            (429, Retry),
            (503, Retry),
            (500, Retry),
            (502, Retry),
            (400, DeadLetter),
            (404, DeadLetter),
            (413, DeadLetter),
            (0, Retry),
            (302, Retry),
        ] {
            assert_eq!(item_verdict(status), verdict, "status {status}");
        }
    }

    #[test]
    fn request_table_case_by_case() {
        use RequestVerdict::*;
        for (status, verdict, outcome) in [
            (None, Retry { node_down: true }, BulkOutcome::Connection),
            (Some(200), Items, BulkOutcome::Ok),
            (Some(413), Split, BulkOutcome::TooLarge),
            (Some(400), Split, BulkOutcome::BadRequest),
            (
                Some(401),
                Retry { node_down: false },
                BulkOutcome::Unauthorized,
            ),
            (
                Some(403),
                Retry { node_down: false },
                BulkOutcome::Unauthorized,
            ),
            (Some(429), Retry { node_down: false }, BulkOutcome::Rejected),
            (
                Some(502),
                Retry { node_down: true },
                BulkOutcome::Unavailable,
            ),
            (
                Some(503),
                Retry { node_down: true },
                BulkOutcome::Unavailable,
            ),
            (
                Some(504),
                Retry { node_down: true },
                BulkOutcome::Unavailable,
            ),
            (
                Some(404),
                Retry { node_down: false },
                BulkOutcome::OtherStatus,
            ),
        ] {
            assert_eq!(
                request_verdict(status),
                (verdict, outcome),
                "status {status:?}"
            );
        }
    }

    #[test]
    fn reads_a_mixed_response_in_request_order() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"create":{"_id":"a","status":201}},
            {"create":{"_id":"b","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[b]: version conflict"}}},
            {"create":{"_id":"c","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected"}}},
            {"create":{"_id":"d","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x]"}}}
        ]}"#;
        let items = read_items(body, ["a", "b", "c", "d"].into_iter()).unwrap();
        let verdicts: Vec<_> = items.iter().map(|i| item_verdict(i.status)).collect();
        assert_eq!(
            verdicts,
            [
                ItemVerdict::Indexed,
                ItemVerdict::Duplicate,
                ItemVerdict::Retry,
                ItemVerdict::DeadLetter
            ]
        );
        assert_eq!(
            error_text(items[3].error.unwrap().get()),
            "mapper_parsing_exception: failed to parse field [x]"
        );
        assert!(items[0].error.is_none());
    }

    #[test]
    fn refuses_answers_that_do_not_match_the_request() {
        let two = br#"{"items":[{"create":{"_id":"a","status":201}},{"create":{"_id":"b","status":201}}]}"#;
        assert!(read_items(two, ["a"].into_iter())
            .unwrap_err()
            .contains("2 items for 1"));
        assert!(read_items(two, ["a", "x"].into_iter())
            .unwrap_err()
            .contains("\"x\""));
        // `filter_path=items.*.error` alone drops successes: positions no longer match.
        let errors_only = br#"{"items":[{"create":{"status":429,"error":{"type":"x"}}}]}"#;
        assert!(read_items(errors_only, ["a", "b"].into_iter()).is_err());
        assert!(read_items(b"<html>", ["a"].into_iter()).is_err());
        // No `_id` (some proxies strip it): read by position.
        let no_ids = br#"{"items":[{"index":{"status":201}}]}"#;
        assert_eq!(
            read_items(no_ids, ["a"].into_iter()).unwrap()[0].status,
            201
        );
    }

    /// The reading without a parser takes the answers of a request whose items all went
    /// through, as Elasticsearch writes them under the sink's `filter_path`, and gives what the
    /// parser gives; any other body is left to the parser.
    #[test]
    fn plain_answers_are_read_without_a_parser_and_agree_with_it() {
        let ids = ["a1", "b2", "c3"];
        let plain: [&[u8]; 3] = [
            br#"{"items":[{"create":{"_id":"a1","status":201}},{"create":{"_id":"b2","status":409}},{"create":{"_id":"c3","status":201}}]}"#,
            br#"{"items":[{"index":{"_id":"a1","status":200}},{"index":{"_id":"b2","status":201}},{"index":{"_id":"c3","status":429}}]}"#,
            br#"{"items":[{"create":{"_id":"a1","status":201}},{"index":{"_id":"b2","status":201}},{"create":{"_id":"c3","status":503}}]}"#,
        ];
        for body in plain {
            let fast = read_plain_items(body, ids.into_iter()).expect("read without a parser");
            let parsed = parse_items(body, ids.into_iter()).unwrap();
            let statuses = |a: &[ItemAnswer]| a.iter().map(|i| i.status).collect::<Vec<_>>();
            assert_eq!(statuses(&fast), statuses(&parsed));
            assert!(fast.iter().all(|i| i.error.is_none()));
            assert_eq!(read_items(body, ids.into_iter()).unwrap().len(), 3);
        }
        let others: [&[u8]; 7] = [
            // an item with an error
            br#"{"items":[{"create":{"_id":"a1","status":201}},{"create":{"_id":"b2","status":400,"error":{"type":"x"}}},{"create":{"_id":"c3","status":201}}]}"#,
            // another id, fewer or more items
            br#"{"items":[{"create":{"_id":"a1","status":201}},{"create":{"_id":"zz","status":201}},{"create":{"_id":"c3","status":201}}]}"#,
            br#"{"items":[{"create":{"_id":"a1","status":201}},{"create":{"_id":"b2","status":201}}]}"#,
            br#"{"items":[{"create":{"_id":"a1","status":201}},{"create":{"_id":"b2","status":201}},{"create":{"_id":"c3","status":201}},{"create":{"_id":"d4","status":201}}]}"#,
            // spaces, other members, another order
            br#"{"items": [{"create":{"_id":"a1","status":201}},{"create":{"_id":"b2","status":201}},{"create":{"_id":"c3","status":201}}]}"#,
            br#"{"took":1,"items":[{"create":{"_id":"a1","status":201}},{"create":{"_id":"b2","status":201}},{"create":{"_id":"c3","status":201}}]}"#,
            br#"{"items":[{"create":{"status":201,"_id":"a1"}},{"create":{"_id":"b2","status":201}},{"create":{"_id":"c3","status":201}}]}"#,
        ];
        for body in others {
            assert!(read_plain_items(body, ids.into_iter()).is_none());
            let statuses = |r: Result<Vec<ItemAnswer>, String>| {
                r.map(|a| a.iter().map(|i| i.status).collect::<Vec<_>>())
            };
            assert_eq!(
                statuses(read_items(body, ids.into_iter())),
                statuses(parse_items(body, ids.into_iter()))
            );
        }
        // An id JSON escapes is compared by the parser, never as raw bytes.
        let quoted = br#"{"items":[{"create":{"_id":"a\"b","status":201}}]}"#;
        assert!(read_plain_items(quoted, [r#"a\"b"#].into_iter()).is_none());
        assert!(read_plain_items(quoted, [r#"a"b"#].into_iter()).is_none());
        assert_eq!(
            read_items(quoted, [r#"a"b"#].into_iter()).unwrap()[0].status,
            201
        );
    }

    #[test]
    fn error_texts_from_every_shape() {
        assert_eq!(
            error_text(
                r#"{"error":{"root_cause":[],"type":"illegal_argument_exception","reason":"must be terminated by a newline"},"status":400}"#
            ),
            "illegal_argument_exception: must be terminated by a newline"
        );
        assert_eq!(
            error_text(
                r#"{"error":"Content-Type header [text/plain] is not supported","status":406}"#
            ),
            "Content-Type header [text/plain] is not supported"
        );
        assert_eq!(error_text(r#"{"type":"x","reason":"y"}"#), "x: y");
        assert_eq!(
            error_text("<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
    }
}
