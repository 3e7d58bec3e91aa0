//! The Kibana saved objects (`dashboards/kibana/*.ndjson`): every field they name (columns,
//! sorts, queries, filters, aggregations, field formats, runtime field scripts) exists in the
//! index template the aggregator really installs, read back from the Elasticsearch test double
//! after a real aggregator's bootstrap, or is a runtime field the data view defines; fields
//! that are aggregated or sorted on are of a type that allows it; references resolve.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use ferry_es_double::Options;
use serde_json::Value;

use crate::deploy_docker::repo;
use crate::util::*;

fn saved_objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("dashboards/kibana"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        for (n, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            let object = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), n + 1));
            out.push((path.clone(), object));
        }
    }
    assert!(!out.is_empty(), "no saved objects under dashboards/kibana");
    out
}

/// Field path → mapping type, from an index template's `mappings.properties` (a `flattened`
/// field stands for every key below it).
fn mapped_fields(properties: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (name, mapping) in properties.as_object().unwrap() {
        let path = format!("{prefix}{name}");
        if let Some(inner) = mapping.get("properties") {
            mapped_fields(inner, &format!("{path}."), out);
        } else {
            out.insert(
                path,
                mapping["type"].as_str().unwrap_or("object").to_string(),
            );
        }
    }
}

/// The type a field has in the template, or through a `flattened` parent.
fn field_type(fields: &BTreeMap<String, String>, field: &str) -> Option<String> {
    if let Some(t) = fields.get(field) {
        return Some(t.clone());
    }
    fields
        .iter()
        .find(|(path, t)| *t == "flattened" && field.starts_with(&format!("{path}.")))
        .map(|_| "keyword".to_string())
}

/// Field names in a KQL query: the words before `:`.
fn kql_fields(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = query.chars().collect();
    let mut in_quotes = false;
    let mut word = String::new();
    for (i, c) in bytes.iter().enumerate() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                word.clear();
            }
            _ if in_quotes => {}
            c if c.is_alphanumeric() || matches!(c, '.' | '_' | '@') => word.push(*c),
            ' ' if bytes[i + 1..].iter().find(|c| **c != ' ') == Some(&':') => {}
            ':' => {
                if !word.is_empty() {
                    out.push(word.clone());
                }
                word.clear();
            }
            _ => word.clear(),
        }
    }
    out
}

/// Fields a Painless script reads: `doc['x']` and `params._source.x` / `params['_source']['x']`.
fn script_fields(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in script.split("doc['").skip(1) {
        out.push(part.split('\'').next().unwrap().to_string());
    }
    for part in script.split("params._source.").skip(1) {
        out.push(
            part.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .next()
                .unwrap()
                .trim_end_matches('.')
                .to_string(),
        );
    }
    for part in script.split("params['_source']['").skip(1) {
        out.push(part.split('\'').next().unwrap().to_string());
    }
    out
}

/// Every (field, how it is used) an object names; `aggregated` marks fields that need doc values.
fn referenced_fields(object: &Value) -> Vec<(String, &'static str)> {
    let a = &object["attributes"];
    let mut out: Vec<(String, &'static str)> = Vec::new();
    let parse = |v: &Value| -> Value {
        v.as_str()
            .map(|s| serde_json::from_str(s).unwrap())
            .unwrap_or(Value::Null)
    };
    if let Some(t) = a["timeFieldName"].as_str() {
        out.push((t.into(), "aggregated"));
    }
    for key in ["fieldFormatMap", "fieldAttrs"] {
        for field in parse(&a[key])
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            out.push((field.clone(), "named"));
        }
    }
    for c in a["columns"].as_array().into_iter().flatten() {
        out.push((c.as_str().unwrap().into(), "named"));
    }
    for s in a["sort"].as_array().into_iter().flatten() {
        out.push((s[0].as_str().unwrap().into(), "aggregated"));
    }
    let source = parse(&a["kibanaSavedObjectMeta"]["searchSourceJSON"]);
    if let Some(q) = source["query"]["query"].as_str() {
        out.extend(kql_fields(q).into_iter().map(|f| (f, "queried")));
    }
    for f in source["filter"].as_array().into_iter().flatten() {
        if let Some(k) = f["meta"]["key"].as_str() {
            out.push((k.into(), "queried"));
        }
    }
    for agg in parse(&a["visState"])["aggs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(f) = agg["params"]["field"].as_str() {
            out.push((f.into(), "aggregated"));
        }
    }
    out
}

const AGGREGATABLE: &[&str] = &[
    "keyword",
    "long",
    "integer",
    "double",
    "float",
    "date",
    "date_nanos",
    "ip",
    "boolean",
];

#[test]
fn kibana_objects_name_only_fields_of_the_installed_index_template() {
    // A real aggregator's bootstrap installs the template into the double; read it back.
    let double = EsDouble::start(Options::default());
    let w = World::new();
    let config = w.config(
        "",
        &format!(
            "sink = {{ type = \"elasticsearch\", urls = [\"{}\"] }}\n",
            double.handle.url()
        ),
    );
    let _aggregator = w.start_aggregator(&config);
    let es: std::net::SocketAddr = double
        .handle
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let template = wait_for(
        "the index template installed",
        Duration::from_secs(30),
        || {
            http(es, "GET", "/_index_template/ferry-elasticsearch", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    let template: Value = serde_json::from_str(&template.body).unwrap();
    let template = &template["index_templates"][0]["index_template"];
    let mut fields = BTreeMap::new();
    mapped_fields(
        &template["template"]["mappings"]["properties"],
        "",
        &mut fields,
    );
    let patterns: Vec<&str> = template["index_patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();

    let objects = saved_objects();
    let ids: HashMap<(String, String), &Value> = objects
        .iter()
        .map(|(_, o)| {
            (
                (
                    o["type"].as_str().unwrap().to_string(),
                    o["id"].as_str().unwrap().to_string(),
                ),
                o,
            )
        })
        .collect();
    assert_eq!(
        ids.len(),
        objects.len(),
        "saved object ids are unique per type"
    );

    // The data view covers the template's data streams and defines the runtime fields.
    let mut runtime: BTreeMap<String, String> = BTreeMap::new();
    for (_, o) in objects.iter().filter(|(_, o)| o["type"] == "index-pattern") {
        let title = o["attributes"]["title"].as_str().unwrap();
        assert!(
            patterns.contains(&title),
            "data view {title:?} is not the template's pattern {patterns:?}"
        );
        let map: Value =
            serde_json::from_str(o["attributes"]["runtimeFieldMap"].as_str().unwrap_or("{}"))
                .unwrap();
        for (name, def) in map.as_object().unwrap() {
            assert!(
                field_type(&fields, name).is_none(),
                "runtime field {name} shadows a mapped field"
            );
            for read in script_fields(def["script"]["source"].as_str().unwrap()) {
                assert!(
                    field_type(&fields, &read).is_some(),
                    "runtime field {name} reads {read}, which the template does not map"
                );
            }
            runtime.insert(name.clone(), def["type"].as_str().unwrap().to_string());
        }
    }
    assert!(!runtime.is_empty() || objects.iter().all(|(_, o)| o["type"] != "index-pattern"));

    let mut named = BTreeSet::new();
    for (file, o) in &objects {
        let what = format!("{} {} {}", file.display(), o["type"], o["id"]);
        for reference in o["references"].as_array().unwrap() {
            let key = (
                reference["type"].as_str().unwrap().to_string(),
                reference["id"].as_str().unwrap().to_string(),
            );
            assert!(
                ids.contains_key(&key),
                "{what}: reference {reference} is not in the file"
            );
        }
        for (field, usage) in referenced_fields(o) {
            let t = field_type(&fields, &field)
                .or_else(|| runtime.get(&field).cloned())
                .unwrap_or_else(|| panic!("{what}: names {field} ({usage}), which is neither in the index template's mappings nor a runtime field"));
            if usage == "aggregated" {
                assert!(
                    AGGREGATABLE.contains(&t.as_str()),
                    "{what}: aggregates or sorts on {field}, of type {t}"
                );
            }
            named.insert(field);
        }
    }
    eprintln!("fields the Kibana objects name: {named:?}");
    // The objects the issue asks for are there.
    for (kind, id) in [
        ("search", "ferry-errors-by-container"),
        ("search", "ferry-one-pod-in-order"),
        ("visualization", "ferry-volume-by-level"),
        ("visualization", "ferry-top-containers-by-errors"),
        ("visualization", "ferry-http-status-mix"),
        ("visualization", "ferry-http-latency"),
    ] {
        assert!(
            ids.contains_key(&(kind.to_string(), id.to_string())),
            "{kind} {id} is missing"
        );
    }
}
