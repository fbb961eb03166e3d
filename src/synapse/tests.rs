use http::Method;

use super::table::{Table, SOURCE};
use super::*;

fn attrs(classified: &Classified) -> Vec<(&str, &str)> {
    classified.resource.iter().collect()
}

fn get(path: &str) -> Classified {
    classify(&Method::GET, path)
}

fn post(path: &str) -> Classified {
    classify(&Method::POST, path)
}

#[test]
fn the_table_compiles_completely() {
    let table = Table::compile(SOURCE).unwrap();
    let rows = SOURCE
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(table.operations.len(), rows);
    assert_eq!(rows, 159);
    assert_eq!(table.actions.len(), 90);
    for action in &table.actions {
        let parts: Vec<&str> = action.split('.').collect();
        assert!(parts.len() >= 2, "{action}");
        assert!(
            parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
            "{action} is not <kind>.<verb>"
        );
    }
}

#[test]
fn the_design_vocabulary_is_covered() {
    let names: Vec<&str> = action_names().collect();
    // Kinds whose specs have a rename operation; the others have read, write and delete.
    let renamable = [
        "pipelines",
        "notebooks",
        "sql_scripts",
        "spark_job_definitions",
        "dataflows",
        "datasets",
        "linked_services",
        "kql_scripts",
        "spark_configurations",
    ];
    let others = [
        "triggers",
        "credentials",
        "libraries",
        "link_connections",
        "lake_databases",
    ];
    for kind in renamable.into_iter().chain(others) {
        let verbs: &[&str] = if renamable.contains(&kind) {
            &["read", "write", "delete", "rename"]
        } else {
            &["read", "write", "delete"]
        };
        for verb in verbs {
            let action = format!("{kind}.{verb}");
            assert!(names.contains(&action.as_str()), "{action}");
        }
        assert_eq!(
            names.contains(&format!("{kind}.rename").as_str()),
            renamable.contains(&kind)
        );
    }
    for action in [
        "pipelines.run",
        "pipeline_runs.read",
        "pipeline_runs.cancel",
        "triggers.control",
        "trigger_runs.read",
        "trigger_runs.rerun",
        "trigger_runs.cancel",
        "notebooks.run",
        "notebook_runs.read",
        "notebook_runs.cancel",
        "spark_job_definitions.execute",
        "spark_job_definitions.debug",
        "spark.batches.read",
        "spark.batches.submit",
        "spark.batches.cancel",
        "spark.sessions.read",
        "spark.sessions.create",
        "spark.sessions.cancel",
        "spark.statements.read",
        "spark.statements.submit",
        "spark.statements.cancel",
        "operations.read",
        "rbac.read",
        "rbac.write",
        "rbac.delete",
        "rbac.check",
        "managed_private_endpoints.read",
        "monitoring.read",
        "workspace.read",
        "pools.read",
        "git.token",
        "http.get",
        "http.post",
        "unknown",
    ] {
        assert!(names.contains(&action), "{action}");
    }
    let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "duplicate action names");
}

#[test]
fn vocabulary_lists_every_operation_once_sorted() {
    let vocabulary = vocabulary();
    let actions: Vec<&str> = vocabulary.iter().map(|a| a.action).collect();
    let mut sorted = actions.clone();
    sorted.sort_unstable();
    assert_eq!(actions, sorted);
    let total: usize = vocabulary.iter().map(|a| a.operations.len()).sum();
    assert_eq!(total, 159);
    let run = vocabulary
        .iter()
        .find(|a| a.action == "pipelines.run")
        .unwrap();
    assert_eq!(
        run.operations,
        vec![OperationInfo {
            operation_id: "Pipeline_CreatePipelineRun",
            method: "POST",
            path: "/pipelines/{pipelineName}/createRun",
        }]
    );
    let writes = vocabulary
        .iter()
        .find(|a| a.action == "libraries.write")
        .unwrap();
    let ids: Vec<&str> = writes.operations.iter().map(|o| o.operation_id).collect();
    assert_eq!(ids, ["Library_Create", "Library_Append", "Library_Flush"]);
    assert!(action_names().take(vocabulary.len()).eq(actions));
}

#[test]
fn artifact_crud_and_runs() {
    let c = get("/pipelines");
    assert_eq!(
        (c.action, c.operation_id),
        ("pipelines.read", Some("Pipeline_GetPipelinesByWorkspace"))
    );
    assert_eq!(attrs(&c), [("kind", "pipelines")]);

    let c = post("/pipelines/nightly_load/createRun");
    assert_eq!(c.action, "pipelines.run");
    assert_eq!(attrs(&c), [("kind", "pipelines"), ("name", "nightly_load")]);

    let c = classify(&Method::DELETE, "/sqlScripts/my%20script");
    assert_eq!(c.action, "sql_scripts.delete");
    assert_eq!(c.resource.get("name"), Some("my script"));

    let c = post("/pipelines/p1/pipelineruns/run-1/queryActivityruns");
    assert_eq!(c.action, "pipeline_runs.read");
    assert_eq!(
        attrs(&c),
        [("kind", "pipelines"), ("name", "p1"), ("run_id", "run-1")]
    );

    let c = post("/triggers/t1/triggerRuns/r9/rerun");
    assert_eq!(c.action, "trigger_runs.rerun");
    assert_eq!(
        attrs(&c),
        [("kind", "triggers"), ("name", "t1"), ("run_id", "r9")]
    );

    let c = get("/operationResults/abc-123");
    assert_eq!(c.action, "operations.read");
    assert_eq!(attrs(&c), [("operation_id", "abc-123")]);

    let c = get("/bigDataPools/pool1");
    assert_eq!(c.action, "pools.read");
    assert_eq!(attrs(&c), [("kind", "spark_pools"), ("pool", "pool1")]);
}

#[test]
fn notebook_runs_are_not_notebooks_named_runs() {
    let c = get("/notebooks/runs/8f2a");
    assert_eq!(
        (c.action, c.operation_id),
        ("notebook_runs.read", Some("RunNotebook_GetStatus"))
    );
    assert_eq!(attrs(&c), [("kind", "notebooks"), ("run_id", "8f2a")]);
    assert_eq!(
        classify(&Method::PUT, "/notebooks/runs/8f2a").action,
        "notebooks.run"
    );
    assert_eq!(
        post("/notebooks/runs/8f2a/cancel").action,
        "notebook_runs.cancel"
    );
    assert_eq!(
        get("/notebooks/runs/8f2a/snapshot").action,
        "notebook_runs.read"
    );

    // A notebook really called "runs", and one called "my notebook".
    let c = get("/notebooks/runs");
    assert_eq!(
        (c.action, c.operation_id),
        ("notebooks.read", Some("Notebook_GetNotebook"))
    );
    assert_eq!(c.resource.get("name"), Some("runs"));
    let c = classify(&Method::DELETE, "/notebooks/runs");
    assert_eq!(c.action, "notebooks.delete");
    let c = post("/notebooks/runs/rename");
    assert_eq!(c.action, "notebooks.rename");
    assert_eq!(c.resource.get("name"), Some("runs"));
    assert_eq!(c.resource.get("run_id"), None);
    let c = get("/notebooks/my%20notebook");
    assert_eq!(c.action, "notebooks.read");
    assert_eq!(c.resource.get("name"), Some("my notebook"));

    // No operation deletes a notebook run.
    assert_eq!(
        classify(&Method::DELETE, "/notebooks/runs/8f2a").action,
        UNKNOWN
    );
    assert_eq!(get("/notebooksSummary").action, "notebooks.read");
}

#[test]
fn literals_compare_case_insensitively_names_keep_their_case() {
    let c = get("/PIPELINES/Nightly");
    assert_eq!(c.action, "pipelines.read");
    assert_eq!(c.resource.get("name"), Some("Nightly"));
    assert_eq!(post("/Pipelines/x/CREATERUN").action, "pipelines.run");
    assert_eq!(get("/pipelineRuns/r1").action, "pipeline_runs.read");
    assert_eq!(get("/NOTEBOOKS/RUNS/r1").action, "notebook_runs.read");
    // Literals are compared on the decoded segment.
    assert_eq!(get("/%70ipelines/x").action, "pipelines.read");
    assert_eq!(get("/pipelines%73/x").action, UNKNOWN);
}

#[test]
fn livy_paths_yield_pool_batch_session_statement() {
    let base = "/livyApi/versions/2019-11-01-preview/sparkPools/pool1";
    let c = classify(&Method::POST, &format!("{base}/batches"));
    assert_eq!(
        (c.action, c.operation_id),
        (
            "spark.batches.submit",
            Some("SparkBatch_CreateSparkBatchJob")
        )
    );
    assert_eq!(attrs(&c), [("pool", "pool1")]);
    let c = get(&format!("{base}/batches/7?detailed=true"));
    assert_eq!(c.action, "spark.batches.read");
    assert_eq!(attrs(&c), [("pool", "pool1"), ("batch_id", "7")]);
    let c = classify(&Method::DELETE, &format!("{base}/batches/7"));
    assert_eq!(c.action, "spark.batches.cancel");
    let c = classify(&Method::POST, &format!("{base}/sessions"));
    assert_eq!(c.action, "spark.sessions.create");
    let c = classify(&Method::PUT, &format!("{base}/sessions/3/reset-timeout"));
    assert_eq!(c.action, "spark.sessions.create");
    assert_eq!(attrs(&c), [("pool", "pool1"), ("session_id", "3")]);
    let c = classify(&Method::DELETE, &format!("{base}/sessions/3"));
    assert_eq!(c.action, "spark.sessions.cancel");
    let c = classify(&Method::POST, &format!("{base}/sessions/3/statements"));
    assert_eq!(c.action, "spark.statements.submit");
    let c = post(&format!("{base}/sessions/3/statements/12/cancel"));
    assert_eq!(c.action, "spark.statements.cancel");
    assert_eq!(
        attrs(&c),
        [
            ("pool", "pool1"),
            ("session_id", "3"),
            ("statement_id", "12")
        ]
    );
    assert_eq!(
        get("/LIVYAPI/VERSIONS/2019-11-01-preview/SPARKPOOLS/p/SESSIONS/3/STATEMENTS/1").action,
        "spark.statements.read"
    );
}

#[test]
fn lake_database_paths_prefer_literals_and_strip_affixes() {
    let c = get("/databases/db1/tables");
    assert_eq!(c.operation_id, Some("ListArtifacts"));
    assert_eq!(
        attrs(&c),
        [
            ("kind", "lake_databases"),
            ("database", "db1"),
            ("artifact_type", "table")
        ]
    );
    let c = get("/databases/db1/tables/t1");
    assert_eq!(c.operation_id, Some("GetArtifactFromDB"));
    assert_eq!(c.resource.get("artifact_type"), Some("table"));
    assert_eq!(c.resource.get("name"), Some("t1"));
    let c = get("/databases/db1/tables/t1/partitionInfos");
    assert_eq!(c.operation_id, Some("ListPartitionInfosForTable"));
    assert_eq!(c.resource.get("table"), Some("t1"));
    let c = get("/databases/db1/schemas/s1/VIEWS");
    assert_eq!(c.operation_id, Some("ListArtifactsInSchemaByType"));
    assert_eq!(c.resource.get("artifact_type"), Some("VIEW"));
    let c = get("/databases/operations/op1");
    assert_eq!(c.action, "operations.read");
    assert_eq!(c.resource.get("operation_id"), Some("op1"));
    // The method decides between a literal route and a parameter route.
    assert_eq!(
        post("/databases/ExecuteChange").operation_id,
        Some("ExecuteChange")
    );
    let c = get("/databases/ExecuteChange");
    assert_eq!(c.operation_id, Some("GetDatabase"));
    assert_eq!(c.resource.get("database"), Some("ExecuteChange"));
    // `{artifactType}s` needs something before the `s`.
    assert_eq!(get("/databases/db1/s").action, UNKNOWN);
}

#[test]
fn unknown_operations() {
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/nope"),
        (Method::DELETE, "/pipelines"),
        (Method::PATCH, "/pipelines/x"),
        (Method::HEAD, "/pipelines/x"),
        (Method::GET, "/pipelines/x/"),
        (Method::GET, "/pipelines/x/y"),
        (Method::POST, "/pipelines/x/createRun/extra"),
        (Method::GET, "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t"),
    ] {
        let c = classify(&method, path);
        assert_eq!(
            (c.action, c.operation_id),
            (UNKNOWN, None),
            "{method} {path}"
        );
        assert_eq!(attrs(&c), [("path", path)]);
    }
    // Ambiguous paths are refused by check_path first; classify alone calls them unknown.
    let c = get("/pipelines/a%2Fb?q=1");
    assert_eq!(c.action, UNKNOWN);
    assert_eq!(attrs(&c), [("path", "/pipelines/a%2Fb")]);
    let c = get("/pipelines/my%20p?api-version=1");
    assert_eq!(c.action, "pipelines.read");
    let c = classify(&Method::DELETE, "/pipelines?secret=1");
    assert_eq!(attrs(&c), [("path", "/pipelines")]);
}

#[test]
fn http_upstreams_get_http_actions() {
    let c = classify_http(&Method::GET, "/api/v1/my%20file?x=1");
    assert_eq!((c.action, c.operation_id), ("http.get", None));
    assert_eq!(attrs(&c), [("path", "/api/v1/my file")]);
    assert_eq!(classify_http(&Method::POST, "/").action, "http.post");
    assert_eq!(classify_http(&Method::DELETE, "/x").action, "http.delete");
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    assert_eq!(classify_http(&propfind, "/x").action, UNKNOWN);
    let names: Vec<&str> = action_names().collect();
    assert!(names.contains(&"http.options"));
}

#[test]
fn ambiguous_paths_are_refused() {
    for (path, error) in [
        ("/pipelines/a%2fb", PathError::EncodedSlash),
        ("/pipelines/a%2Fb", PathError::EncodedSlash),
        ("/pipelines/a%5cb", PathError::EncodedBackslash),
        ("/pipelines/a%5Cb", PathError::EncodedBackslash),
        ("/pipelines/a\\b", PathError::Backslash),
        ("\\pipelines", PathError::NotOrigin),
        ("/pipelines/./x", PathError::DotSegment),
        ("/pipelines/../x", PathError::DotSegment),
        ("/pipelines/x/..", PathError::DotSegment),
        ("/pipelines/x/.", PathError::DotSegment),
        ("/..", PathError::DotSegment),
        ("/pipelines/%2e%2e/x", PathError::DotSegment),
        ("/pipelines/.%2E/x", PathError::DotSegment),
        ("/pipelines/%2E", PathError::DotSegment),
        ("/pipelines//x", PathError::EmptySegment),
        ("//pipelines", PathError::EmptySegment),
        ("/pipelines/%zz", PathError::InvalidPercentEncoding),
        ("/pipelines/%4", PathError::InvalidPercentEncoding),
        ("/pipelines/x%", PathError::InvalidPercentEncoding),
        ("/pipelines/%g0", PathError::InvalidPercentEncoding),
        ("/pipelines/a%00b", PathError::Nul),
        ("/pipelines/a\0b", PathError::Nul),
        ("/pipelines/%FF", PathError::NotUtf8),
        ("/pipelines/%C3", PathError::NotUtf8),
        ("/pipelines/x%20", PathError::PaddedSegment),
        ("/pipelines/%20x/createRun", PathError::PaddedSegment),
        ("/pipelines/x%E3%80%80", PathError::PaddedSegment),
        ("/pipelines/x.", PathError::TrailingDot),
        ("/pipelines/x..", PathError::TrailingDot),
        ("/pipelines/...", PathError::TrailingDot),
        ("/pipelines/x%2e/createRun", PathError::TrailingDot),
        ("", PathError::NotOrigin),
        ("pipelines", PathError::NotOrigin),
        ("*", PathError::NotOrigin),
    ] {
        assert_eq!(check_path(path), Err(error), "{path:?}");
        assert_eq!(get(path).action, UNKNOWN, "{path:?}");
    }
}

#[test]
fn unambiguous_paths_pass() {
    for path in [
        "/",
        "/pipelines",
        "/pipelines/",
        "/pipelines/my%20pipeline",
        "/pipelines/a.b",
        "/pipelines/.x",
        "/pipelines/x..y",
        "/pipelines/%C3%A9t%C3%A9",
        "/pipelines/50%25",
        "/pipelines/a%2Bb",
        // The query is not the path's business.
        "/pipelines/x?a=%zz&b=..//",
    ] {
        assert_eq!(check_path(path), Ok(()), "{path:?}");
    }
}

#[test]
fn errors_never_echo_the_path_or_query() {
    let error = check_path("/pipelines/%2Fsecret?token=abc").unwrap_err();
    let text = error.to_string();
    assert!(
        !text.contains("secret") && !text.contains("token"),
        "{text}"
    );
    assert_eq!(text, "the request path contains an encoded slash (`%2F`)");
}

#[test]
fn resource_is_a_small_ordered_map() {
    let mut c = post("/pipelines/nightly/createRun");
    c.resource.insert("workspace", "contoso".to_owned());
    assert_eq!(
        serde_json::to_string(&c.resource).unwrap(),
        r#"{"kind":"pipelines","name":"nightly","workspace":"contoso"}"#
    );
    c.resource.insert("name", "other".to_owned());
    assert_eq!(c.resource.get("name"), Some("other"));
    assert_eq!(c.resource.len(), 3);
    assert!(Resource::default().is_empty());
}
