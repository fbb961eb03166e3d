//! The table against the official specs: every spec operation classifies to its action.
//!
//! The specs live outside the repository (`../shared/reference/synapse-rest`); without them these
//! tests print a note and pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use http::Method;

use super::{check_path, classify, table::SOURCE};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SpecOperation {
    method: String,
    template: String,
    operation_id: String,
}

fn spec_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/synapse-rest/specification/synapse/data-plane");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("note: {} is absent; skipping the spec walk", dir.display());
        None
    }
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "examples") {
                json_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// Every operation of every spec file, deduplicated by (method, path template).
fn spec_operations(dir: &Path) -> Vec<SpecOperation> {
    let mut files = Vec::new();
    json_files(dir, &mut files);
    files.sort();
    let mut operations = BTreeSet::new();
    for file in &files {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        for section in ["paths", "x-ms-paths"] {
            let Some(paths) = doc.get(section).and_then(|p| p.as_object()) else {
                continue;
            };
            for (template, item) in paths {
                for (method, operation) in item.as_object().unwrap() {
                    if !METHODS.contains(&method.as_str()) {
                        continue;
                    }
                    operations.insert(SpecOperation {
                        method: method.to_uppercase(),
                        template: template.clone(),
                        operation_id: operation["operationId"].as_str().unwrap().to_owned(),
                    });
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    operations
        .into_iter()
        .filter(|o| seen.insert((o.method.clone(), o.template.clone())))
        .collect()
}

/// The table rows, read independently of the classifier's parser.
struct Row {
    method: String,
    template: String,
    operation_id: String,
    action: String,
    bindings: Vec<(String, String)>,
}

fn rows() -> Vec<Row> {
    SOURCE
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 5, "{line}");
            Row {
                method: fields[0].to_owned(),
                template: fields[1].to_owned(),
                operation_id: fields[2].to_owned(),
                action: fields[3].to_owned(),
                bindings: fields[4]
                    .split(' ')
                    .filter(|b| *b != "-")
                    .map(|b| {
                        let (k, v) = b.split_once('=').unwrap();
                        (k.to_owned(), v.to_owned())
                    })
                    .collect(),
            }
        })
        .collect()
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A sample value for a path parameter: Livy ids are integers, the Livy version is a version;
/// everything else needs percent-encoding (a space and a non-ASCII letter).
fn sample(param: &str, index: usize) -> String {
    match param {
        "batchId" | "sessionId" | "statementId" => (40 + index).to_string(),
        "livyApiVersion" => "2019-11-01-preview".to_owned(),
        _ => format!("My Name {index} é"),
    }
}

enum Case {
    Spec,
    Upper,
    Lower,
}

/// The request path for `template` with sample parameters, literals spelled as `case` says.
fn request_path(template: &str, case: &Case) -> (String, Vec<(String, String)>) {
    let path = template.split_once('?').map_or(template, |(p, _)| p);
    let mut samples = Vec::new();
    let mut out = String::new();
    for (index, segment) in path.trim_start_matches('/').split('/').enumerate() {
        out.push('/');
        let literal = |text: &str| match case {
            Case::Spec => text.to_owned(),
            Case::Upper => text.to_uppercase(),
            Case::Lower => text.to_lowercase(),
        };
        match segment.split_once('{') {
            None => out.push_str(&literal(segment)),
            Some((prefix, rest)) => {
                let (name, suffix) = rest.split_once('}').unwrap();
                let value = sample(name, index);
                out.push_str(&literal(prefix));
                out.push_str(&percent_encode(&value));
                out.push_str(&literal(suffix));
                samples.push((name.to_owned(), value));
            }
        }
    }
    (out, samples)
}

#[test]
fn the_table_and_the_specs_agree() {
    let Some(dir) = spec_dir() else { return };
    let specs: BTreeSet<SpecOperation> = spec_operations(&dir).into_iter().collect();
    let table: BTreeSet<SpecOperation> = rows()
        .into_iter()
        .map(|r| SpecOperation {
            method: r.method,
            template: r.template,
            operation_id: r.operation_id,
        })
        .collect();
    let missing: Vec<_> = specs.difference(&table).collect();
    let extra: Vec<_> = table.difference(&specs).collect();
    assert!(
        missing.is_empty(),
        "spec operations missing from the table: {missing:#?}"
    );
    assert!(
        extra.is_empty(),
        "table rows that are no spec operation: {extra:#?}"
    );
    assert_eq!(table.len(), rows().len(), "the table has duplicate rows");
    assert!(
        specs.len() >= 159,
        "only {} spec operations found",
        specs.len()
    );
}

#[test]
fn every_spec_operation_classifies_to_its_action() {
    let Some(dir) = spec_dir() else { return };
    let rows = rows();
    let mut checked = 0;
    for operation in spec_operations(&dir) {
        let row = rows
            .iter()
            .find(|r| r.method == operation.method && r.template == operation.template)
            .unwrap_or_else(|| panic!("{operation:?} is not in the table"));
        assert_eq!(row.operation_id, operation.operation_id);
        // Operations that differ only in a query string (Library_Append) share a route: the
        // classifier names the row without the query.
        let expected_id = match operation.template.split_once('?') {
            None => operation.operation_id.as_str(),
            Some((path, _)) => rows
                .iter()
                .find(|r| r.method == row.method && r.template == path)
                .map_or(operation.operation_id.as_str(), |r| r.operation_id.as_str()),
        };
        let method = Method::from_bytes(operation.method.as_bytes()).unwrap();
        for case in [Case::Spec, Case::Upper, Case::Lower] {
            let (path, samples) = request_path(&operation.template, &case);
            let mut expected: Vec<(String, String)> = row
                .bindings
                .iter()
                .map(|(attribute, value)| {
                    let value = match value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
                        Some(param) => samples
                            .iter()
                            .find(|(name, _)| name == param)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_else(|| panic!("{param} not in {}", row.template)),
                        None => value.clone(),
                    };
                    (attribute.clone(), value)
                })
                .collect();
            expected.sort();
            for (name, _) in &samples {
                assert!(
                    name == "livyApiVersion"
                        || row
                            .bindings
                            .iter()
                            .any(|(_, v)| *v == format!("{{{name}}}")),
                    "{{{name}}} of {} yields no attribute",
                    row.operation_id
                );
            }
            for request in [path.clone(), format!("{path}?api-version=2020-12-01")] {
                assert_eq!(check_path(&request), Ok(()), "{request}");
                let classified = classify(&method, &request);
                assert_eq!(
                    (classified.action, classified.operation_id),
                    (row.action.as_str(), Some(expected_id)),
                    "{} {request}",
                    operation.method
                );
                let mut got: Vec<(String, String)> = classified
                    .resource
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                got.sort();
                assert_eq!(got, expected, "{} {request}", operation.method);
            }
        }
        checked += 1;
    }
    assert!(checked >= 159, "only {checked} operations checked");
}

/// Every header parameter of the data-plane specs (in operations or shared `parameters`) is on
/// the allow-list of request headers a Synapse upstream is sent.
#[test]
fn every_spec_header_parameter_is_forwarded_to_synapse() {
    fn header_parameters(value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if map.get("in").and_then(|v| v.as_str()) == Some("header") {
                    if let Some(name) = map.get("name").and_then(|v| v.as_str()) {
                        out.insert(name.to_ascii_lowercase());
                    }
                }
                map.values().for_each(|v| header_parameters(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| header_parameters(v, out)),
            _ => {}
        }
    }
    let Some(dir) = spec_dir() else { return };
    let mut files = Vec::new();
    json_files(&dir, &mut files);
    let mut names = BTreeSet::new();
    for file in &files {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        header_parameters(&doc, &mut names);
    }
    assert!(names.contains("if-match"), "the walk found {names:?}");
    let allowed = crate::forward::headers::SYNAPSE_REQUEST_HEADERS;
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !allowed.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "spec headers not forwarded: {missing:?}"
    );
}
