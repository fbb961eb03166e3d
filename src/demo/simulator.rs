//! A Synapse development-endpoint simulator (`https://{workspace}.dev.azuresynapse.net`), built
//! from `azure-facts.md` (A.4, B.1, B.2) independently of the gate's own operation table, so a
//! mistake there cannot hide itself here.
//!
//! It checks every request's bearer token as Synapse would (signature against Entra's keys,
//! issuer, audience `https://dev.azuresynapse.net`, and that the calling application is one it
//! knows), keeps artifacts in memory, pages lists with absolute `nextLink` URLs, answers artifact
//! writes with `202` + `Location: /operationResults/{id}` and polling, runs pipelines, serves
//! Livy batch jobs, answers errors as `CloudError`, and records what it received.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde_json::{json, Value};

use super::https::{self, Server};
use crate::audit::now_rfc3339;

/// The artifact collections served by name (`GET /{kind}`, `GET|PUT|DELETE /{kind}/{name}`), with
/// the resource type Synapse reports for each.
const ARTIFACT_KINDS: &[(&str, &str)] = &[
    ("pipelines", "Microsoft.Synapse/workspaces/pipelines"),
    ("notebooks", "Microsoft.Synapse/workspaces/notebooks"),
    ("datasets", "Microsoft.Synapse/workspaces/datasets"),
    (
        "linkedservices",
        "Microsoft.Synapse/workspaces/linkedservices",
    ),
    ("dataflows", "Microsoft.Synapse/workspaces/dataflows"),
    ("sqlScripts", "Microsoft.Synapse/workspaces/sqlscripts"),
    (
        "sparkJobDefinitions",
        "Microsoft.Synapse/workspaces/sparkjobdefinitions",
    ),
    ("triggers", "Microsoft.Synapse/workspaces/triggers"),
];

/// How many times `/operationResults/{id}` answers `202 InProgress` before the result.
const POLLS_BEFORE_DONE: u32 = 1;

/// Which workload tokens the simulator accepts.
#[derive(Clone)]
pub struct TokenTrust {
    /// Accepted `iss` values (Entra v1 `https://sts.windows.net/{tenant}/` and/or v2).
    pub issuers: Vec<String>,
    /// Entra's signing keys.
    pub keys: JwkSet,
    /// The audience Synapse requires.
    pub audience: String,
    /// Applications (`appid` / `azp`) allowed in this workspace; empty means any.
    pub client_ids: Vec<String>,
}

/// What the simulator learnt from an accepted token.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Caller {
    pub issuer: String,
    /// `appid` (v1) or `azp` (v2): the application that called.
    pub client_id: String,
    pub object_id: Option<String>,
}

/// One request as the simulator received it.
#[derive(Clone, Debug, Serialize)]
pub struct Received {
    pub method: String,
    /// The decoded path.
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// The accepted token's caller, or why the token was refused (`None` in `caller` then).
    pub caller: Option<Caller>,
    pub token_problem: Option<String>,
    pub client_request_id: Option<String>,
    pub user_agent: Option<String>,
}

/// A running simulator of one workspace.
pub struct Simulator {
    /// `https://127.0.0.1:{port}`: what the gate's upstream `url` is set to.
    pub url: String,
    pub workspace: String,
    state: Arc<Shared>,
    _server: Server,
}

struct Shared {
    base_url: String,
    workspace: String,
    page_size: usize,
    trust: TokenTrust,
    data: Mutex<Data>,
}

#[derive(Default)]
struct Data {
    artifacts: HashMap<&'static str, BTreeMap<String, Value>>,
    operations: HashMap<String, Operation>,
    runs: Vec<Value>,
    batches: Vec<Value>,
    received: Vec<Received>,
}

struct Operation {
    polls_left: u32,
    result: Value,
}

impl Simulator {
    /// Starts a simulator for `workspace` on `listener`, with example artifacts when `seed`.
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        workspace: &str,
        trust: TokenTrust,
        page_size: usize,
    ) -> anyhow::Result<Self> {
        let url = format!("https://{}", listener.local_addr()?);
        let state = Arc::new(Shared {
            base_url: url.clone(),
            workspace: workspace.to_owned(),
            page_size: page_size.max(1),
            trust,
            data: Mutex::new(Data::default()),
        });
        let handler_state = state.clone();
        let server = Server::start(
            listener,
            tls,
            Arc::new(move |request| handler_state.handle(request)),
        );
        Ok(Self {
            url,
            workspace: workspace.to_owned(),
            state,
            _server: server,
        })
    }

    /// Adds (or replaces) an artifact, e.g. `seed("pipelines", "nightly_load", json!({...}))`.
    pub fn seed(&self, kind: &str, name: &str, properties: Value) {
        let Some(kind) = artifact_kind(kind) else {
            return;
        };
        let resource = self.state.resource(kind, name, properties);
        self.state
            .lock()
            .artifacts
            .entry(kind.0)
            .or_default()
            .insert(name.to_owned(), resource);
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().received.clone()
    }

    /// Forgets what was received.
    pub fn clear_received(&self) {
        self.state.lock().received.clear();
    }

    /// The pipeline runs started so far.
    pub fn runs(&self) -> Vec<Value> {
        self.state.lock().runs.clone()
    }
}

fn artifact_kind(kind: &str) -> Option<&'static (&'static str, &'static str)> {
    ARTIFACT_KINDS.iter().find(|(name, _)| *name == kind)
}

type Reply = Response<Full<Bytes>>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, request: Request<Bytes>) -> Reply {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let path = crate::synapse::percent_decode(request.uri().path());
        let query = request.uri().query().map(str::to_owned);
        let checked = self.check_token(request.headers());
        let reply = match &checked {
            Err(problem) => unauthorized(problem),
            Ok(caller) => self.route(&request, &path, caller),
        };
        let mut reply = reply;
        let request_id = uuid::Uuid::new_v4().to_string();
        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
            reply.headers_mut().insert("x-ms-request-id", value);
        }
        self.lock().received.push(Received {
            method: request.method().to_string(),
            path,
            query,
            status: reply.status().as_u16(),
            caller: checked.as_ref().ok().cloned(),
            token_problem: checked.err(),
            client_request_id: header("x-ms-client-request-id"),
            user_agent: header("user-agent"),
        });
        reply
    }

    /// Checks the bearer token as Synapse does: signed by Entra, for Synapse, by a known app.
    fn check_token(&self, headers: &HeaderMap) -> Result<Caller, String> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values
            .next()
            .ok_or("the request has no Authorization header")?;
        if values.next().is_some() {
            return Err("the request has more than one Authorization header".into());
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("the Authorization header is not a bearer token")?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("the token is not a JWT: {e}"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256
        ) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let jwk = header
            .kid
            .as_deref()
            .and_then(|kid| self.trust.keys.find(kid))
            .ok_or("the token's key is not one of Entra's signing keys")?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable signing key: {e}"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.trust.audience]);
        validation.set_issuer(&self.trust.issuers);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| format!("the token was refused: {e}"))?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let client_id = text("appid")
            .or_else(|| text("azp"))
            .ok_or("the token names no application (appid/azp)")?;
        if !self.trust.client_ids.is_empty() && !self.trust.client_ids.contains(&client_id) {
            return Err(format!(
                "application {client_id} has no Synapse RBAC role in workspace {}",
                self.workspace
            ));
        }
        Ok(Caller {
            issuer: text("iss").unwrap_or_default(),
            client_id,
            object_id: text("oid"),
        })
    }

    fn route(&self, request: &Request<Bytes>, path: &str, caller: &Caller) -> Reply {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = request.method();
        let query = query_pairs(request.uri().query());
        if segments.first() == Some(&"livyApi") {
            return self.livy(method, &segments, &query, request.body(), caller);
        }
        let Some(api_version) = query.get("api-version").cloned() else {
            return cloud_error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        };
        match (method, segments.as_slice()) {
            (&Method::GET, ["operationResults", id]) => self.operation_result(id, &api_version),
            (&Method::POST, ["pipelines", name, "createRun"]) => {
                self.create_run(name, request.body())
            }
            (&Method::GET, ["pipelineruns", id]) => self.pipeline_run(id),
            (&Method::POST, ["pipelineruns", id, "cancel"]) => self.cancel_run(id),
            (&Method::POST, ["queryPipelineRuns"]) => self.query_runs(request.body()),
            (&Method::GET, [kind]) => match artifact_kind(kind) {
                Some(kind) => self.list(kind, &query, &api_version),
                None => not_found(path),
            },
            (_, [kind, name]) => match artifact_kind(kind) {
                Some(kind) => self.artifact(method, kind, name, request.body(), &api_version),
                None => not_found(path),
            },
            _ => not_found(path),
        }
    }

    fn resource(&self, kind: &(&str, &str), name: &str, properties: Value) -> Value {
        json!({
            "id": format!(
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/demo/providers/Microsoft.Synapse/workspaces/{}/{}/{name}",
                self.workspace, kind.0
            ),
            "name": name,
            "type": kind.1,
            "etag": uuid::Uuid::new_v4().simple().to_string(),
            "properties": properties,
        })
    }

    /// A page of a collection; `nextLink` is absolute, as Synapse's are.
    fn list(
        &self,
        kind: &(&'static str, &str),
        query: &BTreeMap<String, String>,
        api_version: &str,
    ) -> Reply {
        let skip: usize = query
            .get("skipToken")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let data = self.lock();
        let all: Vec<&Value> = data
            .artifacts
            .get(kind.0)
            .map(|items| items.values().collect())
            .unwrap_or_default();
        let page: Vec<&Value> = all
            .iter()
            .skip(skip)
            .take(self.page_size)
            .copied()
            .collect();
        let mut body = json!({ "value": page });
        if skip + self.page_size < all.len() {
            body["nextLink"] = json!(format!(
                "{}/{}?api-version={api_version}&skipToken={}",
                self.base_url,
                kind.0,
                skip + self.page_size
            ));
        }
        https::json(StatusCode::OK, &body, &[])
    }

    fn artifact(
        &self,
        method: &Method,
        kind: &(&'static str, &str),
        name: &str,
        body: &[u8],
        api_version: &str,
    ) -> Reply {
        match *method {
            Method::GET => match self.lock().artifacts.get(kind.0).and_then(|a| a.get(name)) {
                Some(resource) => https::json(StatusCode::OK, resource, &[]),
                None => cloud_error(
                    StatusCode::NOT_FOUND,
                    "EntityNotFound",
                    &format!("The {} '{name}' was not found.", singular(kind.0)),
                ),
            },
            Method::PUT => {
                let Ok(body) = serde_json::from_slice::<Value>(body) else {
                    return cloud_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "The request body is not valid JSON.",
                    );
                };
                let Some(properties) = body.get("properties").cloned() else {
                    return cloud_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "The request body has no 'properties'.",
                    );
                };
                let resource = self.resource(kind, name, properties);
                self.lock()
                    .artifacts
                    .entry(kind.0)
                    .or_default()
                    .insert(name.to_owned(), resource.clone());
                let mut accepted = resource.clone();
                accepted["state"] = json!("Creating");
                self.start_operation(accepted, resource, api_version)
            }
            Method::DELETE => {
                let removed = self
                    .lock()
                    .artifacts
                    .get_mut(kind.0)
                    .and_then(|a| a.remove(name));
                match removed {
                    Some(_) => self.start_operation(json!({}), json!({}), api_version),
                    None => Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default(),
                }
            }
            _ => method_not_allowed(),
        }
    }

    /// `202 Accepted` with `Location` to the operation's result, as Synapse answers writes.
    fn start_operation(&self, accepted: Value, result: Value, api_version: &str) -> Reply {
        let id = uuid::Uuid::new_v4().to_string();
        let location = self.operation_location(&id, api_version);
        let mut accepted = accepted;
        if let Some(object) = accepted.as_object_mut() {
            object.insert("operationId".into(), json!(id));
        }
        self.lock().operations.insert(
            id,
            Operation {
                polls_left: POLLS_BEFORE_DONE,
                result,
            },
        );
        https::json(
            StatusCode::ACCEPTED,
            &accepted,
            &[("location", location), ("retry-after", "0".to_owned())],
        )
    }

    fn operation_location(&self, id: &str, api_version: &str) -> String {
        format!(
            "{}/operationResults/{id}?api-version={api_version}",
            self.base_url
        )
    }

    fn operation_result(&self, id: &str, api_version: &str) -> Reply {
        let mut data = self.lock();
        let Some(operation) = data.operations.get_mut(id) else {
            return cloud_error(
                StatusCode::NOT_FOUND,
                "OperationNotFound",
                &format!("The operation '{id}' was not found."),
            );
        };
        if operation.polls_left > 0 {
            operation.polls_left -= 1;
            return https::json(
                StatusCode::ACCEPTED,
                &json!({"status": "InProgress"}),
                &[
                    ("location", self.operation_location(id, api_version)),
                    ("retry-after", "0".to_owned()),
                ],
            );
        }
        https::json(StatusCode::OK, &operation.result, &[])
    }

    fn create_run(&self, pipeline: &str, body: &[u8]) -> Reply {
        let exists = self
            .lock()
            .artifacts
            .get("pipelines")
            .is_some_and(|p| p.contains_key(pipeline));
        if !exists {
            return cloud_error(
                StatusCode::NOT_FOUND,
                "PipelineNotFound",
                &format!(
                    "Pipeline '{pipeline}' does not exist in workspace '{}'.",
                    self.workspace
                ),
            );
        }
        let parameters: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body).unwrap_or_else(|_| json!({}))
        };
        let run_id = uuid::Uuid::new_v4().to_string();
        let now = now_rfc3339();
        self.lock().runs.push(json!({
            "runId": run_id,
            "runGroupId": run_id,
            "isLatest": true,
            "pipelineName": pipeline,
            "parameters": parameters,
            "invokedBy": {"name": "Manual", "id": uuid::Uuid::new_v4().simple().to_string(), "invokedByType": "Manual"},
            "runStart": now,
            "runEnd": now,
            "durationInMs": 0,
            "status": "Succeeded",
            "message": "",
            "lastUpdated": now,
            "annotations": [],
        }));
        https::json(StatusCode::ACCEPTED, &json!({"runId": run_id}), &[])
    }

    fn pipeline_run(&self, id: &str) -> Reply {
        match self.lock().runs.iter().find(|r| r["runId"] == id) {
            Some(run) => https::json(StatusCode::OK, run, &[]),
            None => cloud_error(
                StatusCode::NOT_FOUND,
                "PipelineRunNotFound",
                &format!("Pipeline run '{id}' was not found."),
            ),
        }
    }

    fn cancel_run(&self, id: &str) -> Reply {
        let mut data = self.lock();
        match data.runs.iter_mut().find(|r| r["runId"] == id) {
            Some(run) => {
                run["status"] = json!("Cancelled");
                https::json(StatusCode::OK, &json!({}), &[])
            }
            None => cloud_error(
                StatusCode::NOT_FOUND,
                "PipelineRunNotFound",
                &format!("Pipeline run '{id}' was not found."),
            ),
        }
    }

    /// `POST /queryPipelineRuns`: filters on `PipelineName`, `Status` and `RunId` (`Equals` /
    /// `In`), the ones clients use to follow their runs.
    fn query_runs(&self, body: &[u8]) -> Reply {
        let Ok(filter) = serde_json::from_slice::<Value>(body) else {
            return cloud_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "The request body is not valid JSON.",
            );
        };
        let conditions: Vec<(String, String, Vec<String>)> = filter["filters"]
            .as_array()
            .map(|filters| {
                filters
                    .iter()
                    .map(|f| {
                        (
                            f["operand"].as_str().unwrap_or_default().to_owned(),
                            f["operator"].as_str().unwrap_or_default().to_owned(),
                            f["values"]
                                .as_array()
                                .map(|v| {
                                    v.iter()
                                        .filter_map(|x| x.as_str().map(str::to_owned))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let field_of = |operand: &str| match operand {
            "PipelineName" => Some("pipelineName"),
            "Status" => Some("status"),
            "RunId" => Some("runId"),
            _ => None,
        };
        let data = self.lock();
        let mut runs = Vec::new();
        for run in &data.runs {
            let keep = conditions.iter().all(|(operand, operator, values)| {
                let Some(field) = field_of(operand) else {
                    return true;
                };
                let actual = run[field].as_str().unwrap_or_default();
                let hit = values.iter().any(|v| v == actual);
                match operator.as_str() {
                    "NotEquals" | "NotIn" => !hit,
                    _ => hit,
                }
            });
            if keep {
                runs.push(run.clone());
            }
        }
        https::json(
            StatusCode::OK,
            &json!({"value": runs, "continuationToken": null}),
            &[],
        )
    }

    /// Livy batch jobs: `/livyApi/versions/{v}/sparkPools/{pool}/batches[/{id}]` (A.4).
    fn livy(
        &self,
        method: &Method,
        segments: &[&str],
        query: &BTreeMap<String, String>,
        body: &[u8],
        caller: &Caller,
    ) -> Reply {
        match (method, segments) {
            (&Method::GET, ["livyApi", "versions", _, "sparkPools", pool, "batches"]) => {
                let from: usize = query.get("from").and_then(|v| v.parse().ok()).unwrap_or(0);
                let size: usize = query.get("size").and_then(|v| v.parse().ok()).unwrap_or(20);
                let data = self.lock();
                let in_pool: Vec<&Value> = data
                    .batches
                    .iter()
                    .filter(|b| b["sparkPoolName"] == *pool)
                    .collect();
                let sessions: Vec<&Value> = in_pool.iter().skip(from).take(size).copied().collect();
                https::json(
                    StatusCode::OK,
                    &json!({"from": from, "total": in_pool.len(), "sessions": sessions}),
                    &[],
                )
            }
            (&Method::POST, ["livyApi", "versions", _, "sparkPools", pool, "batches"]) => {
                let Ok(options) = serde_json::from_slice::<Value>(body) else {
                    return cloud_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "The request body is not valid JSON.",
                    );
                };
                let (Some(name), Some(file)) = (options["name"].as_str(), options["file"].as_str())
                else {
                    return cloud_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "A Spark batch job needs 'name' and 'file'.",
                    );
                };
                let mut data = self.lock();
                let id = data.batches.len() as i64 + 1;
                let now = now_rfc3339();
                let job = json!({
                    "livyInfo": {"startingAt": now, "currentState": "starting", "jobCreationRequest": {"name": name, "file": file}},
                    "name": name,
                    "workspaceName": self.workspace,
                    "sparkPoolName": pool,
                    "submitterName": caller.client_id,
                    "submitterId": caller.object_id,
                    "jobType": "SparkBatch",
                    "result": "Uncertain",
                    "schedulerInfo": {"submittedAt": now, "currentState": "Queued"},
                    "tags": options["tags"].clone(),
                    "id": id,
                    "appId": format!("application_1700000000000_{id:04}"),
                    "state": "starting",
                    "log": [],
                });
                data.batches.push(job.clone());
                https::json(StatusCode::OK, &job, &[])
            }
            (method, ["livyApi", "versions", _, "sparkPools", pool, "batches", id]) => {
                let mut data = self.lock();
                let Some(job) = data.batches.iter_mut().find(|b| {
                    b["sparkPoolName"] == *pool && id.parse::<i64>().is_ok_and(|n| b["id"] == n)
                }) else {
                    return cloud_error(
                        StatusCode::NOT_FOUND,
                        "SparkBatchNotFound",
                        &format!("Spark batch job {id} was not found in pool {pool}."),
                    );
                };
                match *method {
                    Method::GET => {
                        // Each look moves a job one step along starting → running → success.
                        let next = match job["state"].as_str() {
                            Some("starting") => "running",
                            Some("running") | Some("success") => "success",
                            Some(other) => other,
                            None => "success",
                        }
                        .to_owned();
                        let shown = job.clone();
                        job["state"] = json!(next);
                        if next == "success" {
                            job["result"] = json!("Succeeded");
                        }
                        https::json(StatusCode::OK, &shown, &[])
                    }
                    Method::DELETE => {
                        job["state"] = json!("killed");
                        job["result"] = json!("Cancelled");
                        https::json(StatusCode::OK, &json!({"msg": "deleted"}), &[])
                    }
                    _ => method_not_allowed(),
                }
            }
            _ => not_found(&format!("/{}", segments.join("/"))),
        }
    }
}

fn singular(kind: &str) -> &str {
    kind.strip_suffix('s').unwrap_or(kind)
}

fn query_pairs(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                crate::synapse::percent_decode(name),
                crate::synapse::percent_decode(value),
            )
        })
        .collect()
}

/// The `CloudError` body every Synapse error carries (B.1).
fn cloud_error(status: StatusCode, code: &str, message: &str) -> Reply {
    https::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
        &[],
    )
}

fn unauthorized(problem: &str) -> Reply {
    let mut reply = cloud_error(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        &format!("Token authentication failed: {problem}"),
    );
    reply.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(
            "Bearer authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", error=\"invalid_token\"",
        ),
    );
    reply
}

fn not_found(path: &str) -> Reply {
    cloud_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("No Synapse operation at {path}."),
    )
}

fn method_not_allowed() -> Reply {
    cloud_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "The method is not allowed here.",
    )
}
