//! What a request to the control API asks for, decoded from its method, URI, content type and
//! body: the route (actix's own matcher, `ResourceDef`), path parameters, query string, JSON
//! body and its validation (`Target::parse`). This is the only decoding the server does
//! (`routes::dispatch` answers from a [`Request`]), so `fuzz/fuzz_targets/api_request.rs` fuzzes
//! exactly what a client reaches.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use actix_router::{Path, PathDeserializer, ResourceDef, Url};
use actix_web::http::{Method, Uri};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::engine::{RetryOptions, SubmitRequest, Target};
use crate::report::{CostBy, JobFilter, TaskFilter};

/// The largest request body the server reads (actix's own default for JSON bodies); a larger
/// one is refused before it is decoded.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// A request the API understood, with its inputs checked.
#[derive(Debug)]
pub enum Request {
    Status,
    Submit(SubmitRequest),
    Retry(Target, RetryOptions),
    Cancel(Target),
    Signal { target: Target, name: String },
    Pause(String),
    Resume(String),
    Events,
    Snapshot,
    Jobs(JobFilter),
    Tasks(TaskFilter),
    Show(Target),
    Cost { by: CostBy, since_ms: Option<u64> },
    Logs { task_run: u64, attempt: Option<u32>, offset: u64 },
    Live,
    Nodes,
    TaskRunsOf(u64),
    OpenApi,
    Metrics,
}

/// Why a request was not understood: the HTTP status and the reason sent back as
/// `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// 400 (bad input), 404 (no such endpoint) or 405 (`allow` names the method it takes).
    pub status: u16,
    pub message: String,
    pub allow: Option<Method>,
}

impl RequestError {
    fn bad(message: String) -> RequestError {
        RequestError { status: 400, message, allow: None }
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    Status,
    Submit,
    Retry,
    Cancel,
    Signal,
    Pause,
    Resume,
    Events,
    Snapshot,
    Jobs,
    Tasks,
    Show,
    Cost,
    Logs,
    Live,
    Nodes,
    TaskRunsOf,
    OpenApi,
    Metrics,
}

/// Every endpoint: the one method it takes and its path (actix's pattern syntax).
const ENDPOINTS: [(Method, &str, Endpoint); 19] = [
    (Method::GET, "/v1/status", Endpoint::Status),
    (Method::POST, "/v1/submit", Endpoint::Submit),
    (Method::POST, "/v1/retry", Endpoint::Retry),
    (Method::POST, "/v1/cancel", Endpoint::Cancel),
    (Method::POST, "/v1/signal", Endpoint::Signal),
    (Method::POST, "/v1/queues/{queue}/pause", Endpoint::Pause),
    (Method::POST, "/v1/queues/{queue}/resume", Endpoint::Resume),
    (Method::GET, "/v1/events", Endpoint::Events),
    (Method::GET, "/v1/snapshot", Endpoint::Snapshot),
    (Method::GET, "/v1/jobs", Endpoint::Jobs),
    (Method::GET, "/v1/tasks", Endpoint::Tasks),
    (Method::GET, "/v1/show/{target}", Endpoint::Show),
    (Method::GET, "/v1/cost", Endpoint::Cost),
    (Method::GET, "/v1/logs/{id}", Endpoint::Logs),
    (Method::GET, "/v1/live", Endpoint::Live),
    (Method::GET, "/v1/nodes", Endpoint::Nodes),
    (Method::GET, "/v1/job_runs/{id}/tasks", Endpoint::TaskRunsOf),
    (Method::GET, "/v1/openapi.json", Endpoint::OpenApi),
    (Method::GET, "/metrics", Endpoint::Metrics),
];

/// The patterns compiled once (a pattern with a parameter is a regex).
static ROUTES: LazyLock<Vec<(ResourceDef, Method, Endpoint)>> = LazyLock::new(|| {
    ENDPOINTS.iter().map(|(method, path, endpoint)| (ResourceDef::new(*path), method.clone(), *endpoint)).collect()
});

/// Decodes a request given as text (the request line's method and target): what a fuzzer or a
/// test has. The server calls [`decode`] with what its HTTP parser already made of them.
pub fn decode_request(
    method: &str,
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Request, RequestError> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| RequestError::bad(format!("method: {e}")))?;
    let uri = target.parse::<Uri>().map_err(|e| RequestError::bad(format!("request target: {e}")))?;
    decode(&method, &uri, content_type, body)
}

/// What `method` on `uri` with this body asks for, or why it is refused.
pub fn decode(method: &Method, uri: &Uri, content_type: Option<&str>, body: &[u8]) -> Result<Request, RequestError> {
    let mut path = Path::new(Url::new(uri.clone()));
    let Some((def, allowed, endpoint)) = ROUTES.iter().find(|(def, ..)| def.is_match(path.unprocessed())) else {
        return Err(RequestError { status: 404, message: "no such endpoint".into(), allow: None });
    };
    if method != allowed {
        let message = format!("this endpoint takes {allowed} only");
        return Err(RequestError { status: 405, message, allow: Some(allowed.clone()) });
    }
    def.capture_match_info(&mut path);
    let query = uri.query().unwrap_or("");
    let json = || Json { content_type, body };
    Ok(match endpoint {
        Endpoint::Status => Request::Status,
        Endpoint::Submit => {
            let b: SubmitBody = json().decode()?;
            Request::Submit(SubmitRequest { job: b.job, params: b.params, priority: b.priority, key: b.key })
        }
        Endpoint::Retry => {
            let b: RetryBody = json().decode()?;
            let options =
                RetryOptions { from: b.from, definition: b.definition, budget_usd_micros: b.budget_usd_micros };
            Request::Retry(target(&b.target)?, options)
        }
        Endpoint::Cancel => Request::Cancel(target(&json().decode::<TargetBody>()?.target)?),
        Endpoint::Signal => {
            let b: SignalBody = json().decode()?;
            Request::Signal { target: target(&b.target)?, name: b.name }
        }
        Endpoint::Pause => Request::Pause(path_params(&path)?),
        Endpoint::Resume => Request::Resume(path_params(&path)?),
        Endpoint::Events => Request::Events,
        Endpoint::Snapshot => Request::Snapshot,
        Endpoint::Jobs => {
            let q: JobsQuery = query_params(query)?;
            let limit = q.limit.map(|n| usize::try_from(n.0).unwrap_or(usize::MAX));
            Request::Jobs(JobFilter { state: q.state, job: q.job, limit })
        }
        Endpoint::Tasks => Request::Tasks(query_params(query)?),
        Endpoint::Show => Request::Show(target(&path_params::<String>(&path)?)?),
        Endpoint::Cost => {
            let q: CostQuery = query_params(query)?;
            Request::Cost { by: q.by.unwrap_or(CostBy::Job), since_ms: q.since_ms.map(|t| t.0) }
        }
        Endpoint::Logs => {
            let (Int64(task_run), q) = (path_params(&path)?, query_params::<LogQuery>(query)?);
            Request::Logs { task_run, attempt: q.attempt, offset: q.offset.map_or(0, |o| o.0) }
        }
        Endpoint::Live => Request::Live,
        Endpoint::Nodes => Request::Nodes,
        Endpoint::TaskRunsOf => Request::TaskRunsOf(path_params::<Int64>(&path)?.0),
        Endpoint::OpenApi => Request::OpenApi,
        Endpoint::Metrics => Request::Metrics,
    })
}

fn target(text: &str) -> Result<Target, RequestError> {
    Target::parse(text).map_err(RequestError::bad)
}

/// The path's one parameter, as actix's `web::Path` deserializes it.
fn path_params<'de, T: Deserialize<'de>>(path: &'de Path<Url>) -> Result<T, RequestError> {
    T::deserialize(PathDeserializer::new(path)).map_err(|e| RequestError::bad(format!("path: {e}")))
}

/// The query string, as actix's `web::Query` deserializes it.
fn query_params<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, RequestError> {
    serde_urlencoded::from_str(query).map_err(|e| RequestError::bad(format!("query string: {e}")))
}

/// A JSON body, taken only with a JSON content type (`application/json`, `…+json`) as actix's
/// `web::Json` does: a form post from a web page cannot pass for a command.
struct Json<'a> {
    content_type: Option<&'a str>,
    body: &'a [u8],
}

impl Json<'_> {
    fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, RequestError> {
        if !self.content_type.is_some_and(is_json) {
            return Err(RequestError::bad("request body: the content type must be application/json".into()));
        }
        serde_json::from_slice(self.body).map_err(|e| RequestError::bad(format!("request body: {e}")))
    }
}

/// `application/json`, `application/json; charset=utf-8`, `application/problem+json`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else { return false };
    !kind.is_empty() && (subtype == "json" || subtype.ends_with("+json"))
}

/// An id, count or time as the API takes it: 0 to 2^63-1, OpenAPI's `int64`, so what the
/// document promises is exactly what is accepted.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "u64")]
pub(super) struct Int64(u64);

impl TryFrom<u64> for Int64 {
    type Error = String;

    fn try_from(n: u64) -> Result<Int64, String> {
        i64::try_from(n).map(|_| Int64(n)).map_err(|_| format!("{n} is larger than 2^63-1"))
    }
}

impl utoipa::PartialSchema for Int64 {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        let int64 = SchemaFormat::KnownFormat(KnownFormat::Int64);
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(int64))
            .minimum(Some(0))
            .maximum(Some(i64::MAX))
            .into()
    }
}

impl ToSchema for Int64 {}

/// Replaced in the served document by one alternative per job of the workflow.
#[derive(Deserialize, ToSchema)]
pub(super) struct SubmitBody {
    job: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[schema(maximum = 100)]
    #[serde(default, deserialize_with = "whole_number")]
    priority: Option<u8>,
    key: Option<String>,
}

/// A JSON integer as JSON Schema counts them, `11.0` as well as `11` (found by schemathesis:
/// the document says `integer`, and serde's `u8` refused `11.0`).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let Some(n) = Option::<f64>::deserialize(d)? else { return Ok(None) };
    match n.fract() == 0.0 && (0.0..=255.0).contains(&n) {
        true => Ok(Some(n as u8)),
        false => Err(serde::de::Error::custom(format!("{n} is not a whole number from 0 to 255"))),
    }
}

#[derive(Deserialize, ToSchema)]
pub(super) struct TargetBody {
    /// A task run (`42`) or a job run (`j7`).
    #[schema(pattern = r"^j?[0-9]{1,19}$")]
    target: String,
}

/// `{"target": "j7", "from": "TASK", "definition": "current", "budget_usd_micros": 500000}`:
/// all but `target` optional (described as `openapi::RetryBody`).
#[derive(Deserialize)]
struct RetryBody {
    target: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    definition: Option<crate::model::rerun::DefinitionChoice>,
    /// `gaffer retry --budget USD`, in micro-dollars.
    #[serde(default)]
    budget_usd_micros: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct SignalBody {
    /// A task run (`42`) or a job run (`j7`).
    #[schema(pattern = r"^j?[0-9]{1,19}$")]
    target: String,
    name: String,
}

/// `report::JobFilter` as the query string gives it (its `limit` within int64, as documented).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct JobsQuery {
    /// Only the job runs in this state.
    #[param(value_type = Option<super::openapi::JobStateName>, nullable = false)]
    state: Option<String>,
    /// Only the runs of this job (its name in the workflow file).
    #[param(nullable = false)]
    job: Option<String>,
    /// Only the newest this many, newest first.
    #[param(value_type = Option<Int64>, nullable = false)]
    limit: Option<Int64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CostQuery {
    /// How to group (default `job`).
    #[param(nullable = false)]
    by: Option<CostBy>,
    /// Only attempts started at or after this time (milliseconds since the Unix epoch).
    #[param(value_type = Option<Int64>, nullable = false)]
    since_ms: Option<Int64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Which attempt (default: the latest).
    #[param(minimum = 1, nullable = false)]
    attempt: Option<u32>,
    /// The byte to read from (default 0): the `offset` of the previous piece.
    #[serde(default)]
    #[param(value_type = Option<Int64>, nullable = false)]
    offset: Option<Int64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(method: &str, target: &str, body: &str) -> Result<Request, RequestError> {
        decode_request(method, target, Some("application/json"), body.as_bytes())
    }

    fn status_of(result: Result<Request, RequestError>) -> u16 {
        result.map_or_else(|e| e.status, |_| 200)
    }

    #[test]
    fn routes_methods_and_bodies_decode_as_the_server_answers_them() {
        let table: [(&str, &str, &str, u16); 16] = [
            ("GET", "/v1/status", "", 200),
            ("POST", "/v1/status", "", 405),
            ("GET", "/v1/nothing", "", 404),
            ("POST", "/v1/submit", r#"{"job": "a", "priority": 11.0}"#, 200),
            ("POST", "/v1/submit", r#"{"job": "a", "priority": 11.5}"#, 400),
            ("POST", "/v1/submit", r#"{"params": {}}"#, 400),
            ("POST", "/v1/retry", r#"{"target": "j7", "budget_usd_micros": 5}"#, 200),
            ("POST", "/v1/cancel", r#"{"target": "x7"}"#, 400),
            ("POST", "/v1/signal", r#"{"target": "42", "name": "go"}"#, 200),
            ("POST", "/v1/queues/q%20one/pause", "", 200),
            ("GET", "/v1/show/j18446744073709551616", "", 400),
            ("GET", "/v1/jobs?limit=9223372036854775808", "", 400),
            ("GET", "/v1/cost?by=model&since_ms=5", "", 200),
            ("GET", "/v1/cost?by=week", "", 400),
            ("GET", "/v1/logs/3?attempt=2&offset=10", "", 200),
            ("GET", "/v1/job_runs/-1/tasks", "", 400),
        ];
        for (method, target, body, expected) in table {
            assert_eq!(status_of(decoded(method, target, body)), expected, "{method} {target} {body}");
        }
    }

    #[test]
    fn decoded_values_are_what_the_request_said() {
        let Ok(Request::Logs { task_run: 3, attempt: Some(2), offset: 10 }) =
            decoded("GET", "/v1/logs/3?attempt=2&offset=10", "")
        else {
            panic!("logs not decoded")
        };
        let Ok(Request::Pause(queue)) = decoded("POST", "/v1/queues/q%20one/pause", "") else { panic!("pause") };
        assert_eq!(queue, "q one");
        let Ok(Request::Signal { target: Target::TaskRun(42), name }) =
            decoded("POST", "/v1/signal", r#"{"target": "42", "name": "go"}"#)
        else {
            panic!("signal not decoded")
        };
        assert_eq!(name, "go");
        let refused = decoded("POST", "/v1/status", "").expect_err("a GET endpoint refuses POST");
        assert_eq!(refused.allow, Some(Method::GET));
    }

    #[test]
    fn a_body_without_a_json_content_type_is_refused() {
        for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("json")] {
            let result = decode_request("POST", "/v1/cancel", content_type, br#"{"target": "7"}"#);
            assert_eq!(status_of(result), 400, "{content_type:?}");
        }
        for content_type in ["application/json; charset=utf-8", "Application/JSON", "application/problem+json"] {
            let result = decode_request("POST", "/v1/cancel", Some(content_type), br#"{"target": "7"}"#);
            assert_eq!(status_of(result), 200, "{content_type}");
        }
    }

    /// The router and the served document name the same endpoints: every operation of the
    /// OpenAPI document decodes (a path parameter filled with `1`), none is 404 or 405.
    #[test]
    fn every_documented_operation_is_routed() {
        let workflow = crate::config::parse(std::path::Path::new("w.toml"), "[jobs.a.tasks.t]\nrun = \"true\"\n")
            .expect("workflow");
        let document: serde_json::Value =
            serde_json::from_str(&super::super::openapi::document(&workflow)).expect("document");
        let paths = document["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), ENDPOINTS.len());
        for (path, operations) in paths {
            let filled: String =
                path.split('/').map(|s| if s.starts_with('{') { "1" } else { s }).collect::<Vec<_>>().join("/");
            for method in operations.as_object().expect("operations").keys() {
                let body = r#"{"job": "a", "target": "1", "name": "go"}"#;
                let result = decoded(&method.to_uppercase(), &filled, body);
                assert!(result.is_ok(), "{method} {path}: {:?}", result.err());
            }
        }
    }
}
