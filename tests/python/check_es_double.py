"""Checks the Elasticsearch test double from outside, with the official Python client.

Usage: check_es_double.py ES_URL CONTROL_URL OPENSEARCH_URL

The client must take the double for Elasticsearch (its product check reads the
`X-Elastic-Product` header of every answer), parse its template, ILM and data-stream answers,
and `helpers.bulk` / `helpers.streaming_bulk` must read its mixed per-item answers. The third
URL is a double posing as OpenSearch, which the client must refuse. Exits non-zero, naming the
check, on any failure. Needs `pip install elasticsearch==9.1.3` (see .ci/run).
"""

import json
import sys
import urllib.request

try:
    import elasticsearch
    from elasticsearch import Elasticsearch, helpers
except ImportError as e:  # pragma: no cover - the point is the message
    sys.exit(
        f"the Python elasticsearch client is missing ({e}): pip install elasticsearch==9.1.3, "
        "or set FERRY_TEST_SKIP_PYTHON=1 to skip this check"
    )


def control(url, path, body):
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def check(what, cond, detail=""):
    if not cond:
        sys.exit(f"FAILED: {what} {detail}")
    print(f"ok: {what}")


def main():
    es_url, control_url, opensearch_url = sys.argv[1:4]
    es = Elasticsearch(es_url, request_timeout=10)

    info = es.info()
    check("info() accepts the double as Elasticsearch", info["version"]["number"].startswith("9."), info)

    es.ilm.put_lifecycle(
        name="py-policy",
        policy={"phases": {"hot": {"actions": {"rollover": {"max_age": "1d"}}}, "delete": {"min_age": "7d", "actions": {"delete": {}}}}},
    )
    got = es.ilm.get_lifecycle(name="py-policy")
    check("ILM policy round trip", "py-policy" in got, got)
    es.indices.put_index_template(
        name="py-template", index_patterns=["logs-py-*"], priority=501, data_stream={}, template={"settings": {"index.lifecycle.name": "py-policy"}}
    )
    got = es.indices.get_index_template(name="py-template")
    check("index template round trip", got["index_templates"][0]["name"] == "py-template", got)
    es.indices.create_data_stream(name="logs-py-default")
    got = es.indices.get_data_stream(name="logs-py-default")
    backing = got["data_streams"][0]["indices"][0]["index_name"]
    check("data stream with a backing index", backing.startswith(".ds-logs-py-default-"), got)

    def actions(prefix, n):
        return [
            {"_op_type": "create", "_index": "logs-py-default", "_id": f"{prefix}{i}", "_source": {"@timestamp": "2026-11-28T08:00:00Z", "message": f"{prefix} {i}"}}
            for i in range(n)
        ]

    # One response mixing 201, 409, 429 and 400.
    control(control_url, "/script", {"items": [201, 409, 429, 400]})
    ok, errors = helpers.bulk(es, actions("mix", 4), raise_on_error=False, raise_on_exception=False, max_retries=0)
    statuses = sorted(list(e.values())[0]["status"] for e in errors)
    check("helpers.bulk parses a mixed response", ok == 1 and statuses == [400, 409, 429], (ok, errors))
    types = sorted(list(e.values())[0]["error"]["type"] for e in errors)
    check(
        "error types as Elasticsearch names them",
        types == ["es_rejected_execution_exception", "mapper_parsing_exception", "version_conflict_engine_exception"],
        types,
    )

    # streaming_bulk retries 429 items alone and then succeeds.
    control(control_url, "/script", {"items": [429, 201, 429]})
    results = list(helpers.streaming_bulk(es, actions("retry", 3), max_retries=3, initial_backoff=0, raise_on_error=False))
    check("streaming_bulk retries 429 items", all(ok for ok, _ in results) and len(results) == 3, results)

    # A data stream takes only `create`.
    ok, errors = helpers.bulk(es, [{"_op_type": "index", "_index": "logs-py-default", "_source": {"@timestamp": "2026-11-28T08:00:00Z"}}], raise_on_error=False)
    reason = list(errors[0].values())[0]["error"]["reason"] if errors else ""
    check("index op on a data stream is refused per item", ok == 0 and "op_type of create" in reason, errors)

    # Whole-request 429 surfaces as the client's error with the status.
    control(control_url, "/script", {"requests": [429]})
    try:
        es.options(max_retries=0, retry_on_status=()).bulk(operations=actions("whole", 1))
        check("whole-request 429", False, "no error raised")
    except elasticsearch.ApiError as e:
        check("whole-request 429 is an ApiError with status 429", e.meta.status == 429, e)

    # A server without the product header is refused.
    try:
        Elasticsearch(opensearch_url, request_timeout=10).info()
        check("OpenSearch is refused", False, "info() succeeded")
    except elasticsearch.UnsupportedProductError as e:
        check("a server without X-Elastic-Product is refused", True, e)


if __name__ == "__main__":
    main()
