//! The endpoints. Reads go to the store (MVCC snapshots, never blocking the engine); writes go
//! through the `EngineHandle`.

use std::collections::BTreeMap;
use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{ConnectionType, Method};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::openapi::{self as doc, JobStateName};
use super::{ApiState, Peer};
use crate::engine::{EngineError, Target};
use crate::report::{self, CostBy, JobFilter, QueryError, TaskFilter};
use crate::store::Reader;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("")
            .wrap(from_fn(only_our_user))
            .service(one(Method::GET, "/v1/status", status))
            .service(one(Method::POST, "/v1/submit", submit))
            .service(one(Method::POST, "/v1/retry", retry))
            .service(one(Method::POST, "/v1/cancel", cancel))
            .service(one(Method::POST, "/v1/signal", signal))
            .service(one(Method::POST, "/v1/queues/{queue}/pause", pause))
            .service(one(Method::POST, "/v1/queues/{queue}/resume", resume))
            .service(one(Method::GET, "/v1/events", events))
            .service(one(Method::GET, "/v1/snapshot", snapshot))
            .service(one(Method::GET, "/v1/jobs", jobs))
            .service(one(Method::GET, "/v1/tasks", tasks))
            .service(one(Method::GET, "/v1/show/{target}", show))
            .service(one(Method::GET, "/v1/cost", cost))
            .service(one(Method::GET, "/v1/logs/{id}", logs))
            .service(one(Method::GET, "/v1/live", live))
            .service(one(Method::GET, "/v1/job_runs/{id}/tasks", task_runs_of))
            .service(one(Method::GET, "/v1/openapi.json", openapi))
            .service(one(Method::GET, "/metrics", super::metrics::metrics))
            .default_service(web::to(|| async { HttpResponse::NotFound().json(json!({"error": "no such endpoint"})) })),
    );
}

/// A path served for one method; any other is answered 405 with the `Allow` header.
fn one<F, Args>(method: Method, path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let allow = method.to_string();
    web::resource(path).route(web::method(method).to(handler)).default_service(web::to(move || {
        let allow = allow.clone();
        async move {
            HttpResponse::MethodNotAllowed()
                .insert_header((actix_web::http::header::ALLOW, allow.clone()))
                .json(json!({"error": format!("this endpoint takes {allow} only")}))
        }
    }))
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

/// A body, query or path that does not parse is answered like every other refusal: JSON with
/// the reason, status 400.
pub fn extractor_errors(cfg: &mut web::ServiceConfig) {
    let bad = |message: String| {
        let response = HttpResponse::BadRequest().json(json!({"error": message}));
        actix_web::error::InternalError::from_response(message, response).into()
    };
    cfg.app_data(web::JsonConfig::default().error_handler(move |e, _| bad(format!("request body: {e}"))))
        .app_data(web::QueryConfig::default().error_handler(move |e, _| bad(format!("query string: {e}"))))
        .app_data(web::PathConfig::default().error_handler(move |e, _| bad(format!("path: {e}"))));
}

/// On the unix socket: only the uid gaffer runs as. Over TCP: the bearer token, and a Host
/// that names a loopback address (no DNS rebinding from a browser).
async fn only_our_user(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let refusal = match req.conn_data::<Peer>() {
        Some(Peer::Local(Some(uid))) if *uid == nix::unistd::Uid::current().as_raw() => None,
        Some(Peer::Tcp) => tcp_refusal(&req),
        _ => Some(HttpResponse::Forbidden().json(json!({"error": "this gaffer instance belongs to another user"}))),
    };
    match refusal {
        None => Ok(next.call(req).await?.map_into_left_body()),
        Some(mut response) => {
            // A refused client gets no kept-alive connection to try again on.
            response.head_mut().set_connection_type(ConnectionType::Close);
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

fn tcp_refusal(req: &ServiceRequest) -> Option<HttpResponse> {
    let expected = req.app_data::<web::Data<ApiState>>().and_then(|s| s.token.clone()).unwrap_or_default();
    let given =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !super::token::matches(&expected, given.unwrap_or("")) {
        return Some(
            HttpResponse::Unauthorized().json(json!({"error": "missing or wrong bearer token (see STATE_DIR/token)"})),
        );
    }
    let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !super::token::is_loopback_host(host) {
        return Some(
            HttpResponse::Forbidden().json(json!({"error": format!("Host `{host}` is not a loopback address")})),
        );
    }
    // A request a web page makes carries its Origin: only pages served from this machine.
    let origin = req.headers().get("origin").map(|v| v.to_str().unwrap_or("?"));
    if let Some(origin) = origin.filter(|o| !super::token::is_loopback_origin(o)) {
        return Some(
            HttpResponse::Forbidden().json(json!({"error": format!("Origin `{origin}` is not a loopback address")})),
        );
    }
    None
}

/// 200 with `value` as JSON, its numbers in plain decimals (`crate::json`): money must never
/// reach a client as `1e-6`.
fn ok_json(value: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(crate::json::text(value))
}

fn error(e: &EngineError) -> HttpResponse {
    let body = json!({"error": e.to_string()});
    match e {
        EngineError::Invalid(_) => HttpResponse::BadRequest().json(body),
        EngineError::Refused(_) => HttpResponse::Conflict().json(body),
        EngineError::UnknownId(_) => HttpResponse::NotFound().json(body),
        _ => HttpResponse::ServiceUnavailable().json(body),
    }
}

/// SPEC §4.1 `status --json`: the instance, its queues, task runs per state, total cost.
#[utoipa::path(get, path = "/v1/status", tag = "read", responses(
    (status = 200, body = doc::Status), (status = 500, body = doc::Failure)))]
pub(super) async fn status(state: web::Data<ApiState>) -> HttpResponse {
    let dir = state.state_dir.clone();
    let live = state.handle.queues().await.ok();
    match web::block(move || report::status_value(&dir, Some(std::process::id()), live.as_deref())).await {
        Ok(Ok(value)) => ok_json(&value),
        Ok(Err(e)) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

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

/// Starts a run of a job (`gaffer submit`); with a `key`, a repeat gets the first run back.
#[utoipa::path(post, path = "/v1/submit", tag = "commands", responses(
    (status = 200, body = doc::Submitted), (status = 400, body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn submit(state: web::Data<ApiState>, body: web::Json<SubmitBody>) -> HttpResponse {
    let body = body.into_inner();
    let request =
        crate::engine::SubmitRequest { job: body.job, params: body.params, priority: body.priority, key: body.key };
    match state.handle.submit_request(request).await {
        Ok(submitted) => HttpResponse::Ok().json(json!({"job_run": submitted.job_run, "existing": submitted.existing})),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize, ToSchema)]
pub(super) struct TargetBody {
    /// A task run (`42`) or a job run (`j7`).
    #[schema(pattern = r"^j?[0-9]{1,19}$")]
    target: String,
}

fn bad_target(message: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message}))
}

/// `{"target": "j7", "from": "TASK", "definition": "current", "budget_usd_micros": 500000}`:
/// all but `target` optional (described as `openapi::RetryBody`).
#[derive(Deserialize)]
pub(super) struct RetryRequest {
    target: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    definition: Option<crate::model::rerun::DefinitionChoice>,
    /// `gaffer retry --budget USD`, in micro-dollars.
    #[serde(default)]
    budget_usd_micros: Option<u64>,
}

/// Retries a dead or cancelled task run, or every one of a job run (`gaffer retry`).
#[utoipa::path(post, path = "/v1/retry", tag = "commands", request_body = doc::RetryBody, responses(
    (status = 200, body = doc::Message), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
    (status = 409, description = "nothing to retry there", body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn retry(state: web::Data<ApiState>, body: web::Json<RetryRequest>) -> HttpResponse {
    let body = body.into_inner();
    let options = crate::engine::RetryOptions {
        from: body.from,
        definition: body.definition,
        budget_usd_micros: body.budget_usd_micros,
    };
    match Target::parse(&body.target) {
        Ok(t) => answer(state.handle.retry_with(t, options).await),
        Err(message) => bad_target(message),
    }
}

/// Cancels a task run or a job run (`gaffer cancel`).
#[utoipa::path(post, path = "/v1/cancel", tag = "commands", responses(
    (status = 200, body = doc::Message), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
    (status = 409, description = "nothing to cancel there", body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn cancel(state: web::Data<ApiState>, body: web::Json<TargetBody>) -> HttpResponse {
    match Target::parse(&body.target) {
        Ok(t) => answer(state.handle.cancel(t).await),
        Err(message) => bad_target(message),
    }
}

#[derive(Deserialize, ToSchema)]
pub(super) struct SignalBody {
    /// A task run (`42`) or a job run (`j7`).
    #[schema(pattern = r"^j?[0-9]{1,19}$")]
    target: String,
    name: String,
}

/// Releases task runs waiting for `name`: all of a job run (`j7`) or one task run (`42`).
#[utoipa::path(post, path = "/v1/signal", tag = "commands", responses(
    (status = 200, body = doc::Message), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
    (status = 409, description = "nothing waits for it there", body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn signal(state: web::Data<ApiState>, body: web::Json<SignalBody>) -> HttpResponse {
    match Target::parse(&body.target) {
        Ok(t) => answer(state.handle.signal(t, &body.name).await),
        Err(message) => bad_target(message),
    }
}

fn answer(result: Result<String, EngineError>) -> HttpResponse {
    match result {
        Ok(message) => HttpResponse::Ok().json(json!({"message": message})),
        Err(e) => error(&e),
    }
}

/// Holds a queue: nothing more starts from it until `resume`; kept across restarts.
#[utoipa::path(post, path = "/v1/queues/{queue}/pause", tag = "commands", params(("queue", description = "a queue of the workflow")),
    responses((status = 200, body = doc::Message), (status = 404, body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn pause(state: web::Data<ApiState>, queue: web::Path<String>) -> HttpResponse {
    set_paused(&state, &queue, true).await
}

/// Releases a paused queue.
#[utoipa::path(post, path = "/v1/queues/{queue}/resume", tag = "commands", params(("queue", description = "a queue of the workflow")),
    responses((status = 200, body = doc::Message), (status = 404, body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn resume(state: web::Data<ApiState>, queue: web::Path<String>) -> HttpResponse {
    set_paused(&state, &queue, false).await
}

async fn set_paused(state: &ApiState, queue: &str, paused: bool) -> HttpResponse {
    match state.handle.set_paused(queue, paused).await {
        Ok(true) => HttpResponse::Ok()
            .json(json!({"message": format!("queue {queue} {}", if paused { "paused" } else { "resumed" })})),
        Ok(false) => HttpResponse::NotFound().json(json!({"error": format!("no queue `{queue}`")})),
        Err(e) => error(&e),
    }
}

/// Everything a view draws its first frame from (`gaffer tui`). Its shape follows the engine's
/// snapshot types and is not a promise to other clients.
#[utoipa::path(get, path = "/v1/snapshot", tag = "views", responses(
    (status = 200, body = Object), (status = 503, body = doc::Failure)))]
pub(super) async fn snapshot(state: web::Data<ApiState>) -> HttpResponse {
    match state.handle.snapshot().await {
        Ok(snapshot) => ok_json(&snapshot),
        Err(e) => error(&e),
    }
}

/// Runs a query of the store off the server's threads.
async fn query(
    state: &ApiState,
    read: impl FnOnce(&Path, &Reader) -> Result<Value, QueryError> + Send + 'static,
) -> HttpResponse {
    let dir = state.state_dir.clone();
    let answer = web::block(move || read(&dir, &crate::store::open_reader(&dir)?)).await;
    match answer {
        Ok(Ok(value)) => ok_json(&value),
        Ok(Err(e)) => query_error(e),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

pub(super) fn query_error(e: QueryError) -> HttpResponse {
    match e {
        QueryError::NotFound(message) => HttpResponse::NotFound().json(json!({"error": message})),
        QueryError::Invalid(message) => HttpResponse::BadRequest().json(json!({"error": message})),
        QueryError::NotYet(message) => HttpResponse::Conflict().json(json!({"error": message})),
        e => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

/// `report::JobFilter` as the query string gives it (its `limit` within int64, as documented).
#[derive(Deserialize, IntoParams)]
pub(super) struct JobsQuery {
    /// Only the job runs in this state.
    #[param(value_type = Option<JobStateName>, nullable = false)]
    state: Option<String>,
    /// Only the runs of this job (its name in the workflow file).
    #[param(nullable = false)]
    job: Option<String>,
    /// Only the newest this many, newest first.
    #[param(value_type = Option<Int64>, nullable = false)]
    limit: Option<Int64>,
}

/// SPEC §4.1 `jobs --json`, filtered by `?state=&job=&limit=`; streamed.
#[utoipa::path(get, path = "/v1/jobs", tag = "read", params(JobsQuery), responses(
    (status = 200, body = Vec<doc::JobRun>), (status = 400, body = doc::Failure)))]
pub(super) async fn jobs(state: web::Data<ApiState>, q: web::Query<JobsQuery>) -> HttpResponse {
    let q = q.into_inner();
    let limit = q.limit.map(|n| usize::try_from(n.0).unwrap_or(usize::MAX));
    let filter = JobFilter { state: q.state, job: q.job, limit };
    super::stream::json_array(&state, move |reader, emit| report::for_each_job(reader, &filter, emit)).await
}

/// SPEC §4.1 `tasks --json`, filtered by `?state=&job=&queue=` (`?state=dead`: the dead letters).
/// Streamed: an answer of 100,000 task runs never sits whole in memory.
#[utoipa::path(get, path = "/v1/tasks", tag = "read", params(TaskFilter), responses(
    (status = 200, body = Vec<doc::TaskRun>), (status = 400, body = doc::Failure)))]
pub(super) async fn tasks(state: web::Data<ApiState>, filter: web::Query<TaskFilter>) -> HttpResponse {
    let filter = filter.into_inner();
    super::stream::json_array(&state, move |reader, emit| report::for_each_task(reader, &filter, emit)).await
}

/// `show ID --json`: a task run (`42`) with its attempts, or a job run (`j7`) with its tasks.
#[utoipa::path(get, path = "/v1/show/{target}", tag = "read",
    params(("target", description = "a task run (`42`) or a job run (`j7`)", pattern = r"^j?[0-9]{1,19}$")),
    responses((status = 200, body = doc::Shown),
        (status = 400, body = doc::Failure), (status = 404, body = doc::Failure)))]
pub(super) async fn show(state: web::Data<ApiState>, target: web::Path<String>) -> HttpResponse {
    match Target::parse(&target) {
        Ok(target) => query(&state, move |_, reader| report::show(reader, target)).await,
        Err(message) => bad_target(message),
    }
}

#[derive(Deserialize, IntoParams)]
pub(super) struct CostQuery {
    /// How to group (default `job`).
    #[param(nullable = false)]
    by: Option<CostBy>,
    /// Only attempts started at or after this time (milliseconds since the Unix epoch).
    #[param(value_type = Option<Int64>, nullable = false)]
    since_ms: Option<Int64>,
}

/// `cost --json`: `?by=job|task|queue|model|day&since_ms=EPOCH_MS`.
#[utoipa::path(get, path = "/v1/cost", tag = "read", params(CostQuery), responses(
    (status = 200, body = doc::Cost), (status = 400, body = doc::Failure)))]
pub(super) async fn cost(state: web::Data<ApiState>, q: web::Query<CostQuery>) -> HttpResponse {
    let q = q.into_inner();
    let since_ms = q.since_ms.map(|t| t.0);
    query(&state, move |_, reader| report::cost(reader, q.by.unwrap_or(CostBy::Job), since_ms)).await
}

#[derive(Deserialize, IntoParams)]
pub(super) struct LogQuery {
    /// Which attempt (default: the latest).
    #[param(minimum = 1, nullable = false)]
    attempt: Option<u32>,
    /// The byte to read from (default 0): the `offset` of the previous piece.
    #[serde(default)]
    #[param(value_type = Option<Int64>, nullable = false)]
    offset: Option<Int64>,
}

/// A piece of an attempt's log from `?offset=` (default the latest attempt, from the start);
/// `logs --follow` asks again from the offset it got until the attempt has ended.
#[utoipa::path(get, path = "/v1/logs/{id}", tag = "read", params(("id" = Int64, Path, description = "a task run"), LogQuery),
    responses((status = 200, body = doc::LogChunk), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
        (status = 409, description = "no attempt has started yet", body = doc::Failure)))]
pub(super) async fn logs(state: web::Data<ApiState>, id: web::Path<Int64>, q: web::Query<LogQuery>) -> HttpResponse {
    let (id, q) = (id.into_inner().0, q.into_inner());
    let offset = q.offset.map_or(0, |o| o.0);
    query(&state, move |dir, reader| report::log_chunk(dir, reader, id, q.attempt, offset)).await
}

/// Workers and queues, for a view's once-a-second refresh (`gaffer tui`; shape not promised).
#[utoipa::path(get, path = "/v1/live", tag = "views", responses(
    (status = 200, body = Vec<Value>), (status = 503, body = doc::Failure)))]
pub(super) async fn live(state: web::Data<ApiState>) -> HttpResponse {
    match state.handle.queues().await {
        Ok(queues) => HttpResponse::Ok().json((state.handle.workers(), queues)),
        Err(e) => error(&e),
    }
}

/// A job run's task runs, each as `tasks --json` gives it (what `gaffer tui` loads when a run starts).
#[utoipa::path(get, path = "/v1/job_runs/{id}/tasks", tag = "views", params(("id" = Int64, Path, description = "a job run, without its `j`")),
    responses((status = 200, body = Vec<doc::TaskRun>), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
        (status = 503, body = doc::Failure)))]
pub(super) async fn task_runs_of(state: web::Data<ApiState>, id: web::Path<Int64>) -> HttpResponse {
    match state.handle.task_runs_of(id.0).await {
        Ok(tasks) => HttpResponse::Ok().json(tasks),
        Err(e) => error(&e),
    }
}

/// An events client that has taken nothing for this long while events wait for it is dropped
/// (its stream ends): one that stopped reading (a suspended `gaffer tui`, a stuck script) must
/// not make a busy `serve` keep every event for it.
const EVENTS_STALL: std::time::Duration = std::time::Duration::from_secs(10);
/// Events formatted ahead of what the client has taken.
const EVENTS_AHEAD: usize = 256;

/// Server-sent events: every engine event from now on (SPEC §6), one `data:` line each.
#[utoipa::path(get, path = "/v1/events", tag = "views", responses(
    (status = 200, content_type = "text/event-stream", body = String), (status = 503, body = doc::Failure)))]
pub(super) async fn events(state: web::Data<ApiState>) -> HttpResponse {
    let mut receiver = match state.handle.subscribe().await {
        Ok(receiver) => receiver,
        Err(e) => return error(&e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(EVENTS_AHEAD);
    actix_web::rt::spawn(async move {
        while let Some(event) = receiver.recv().await {
            let chunk = web::Bytes::from(format!("data: {}\n\n", crate::json::text(&event.to_json())));
            if !matches!(tokio::time::timeout(EVENTS_STALL, tx.send(chunk)).await, Ok(Ok(()))) {
                break; // gone or stalled; dropping `receiver` unsubscribes it
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, actix_web::Error>(chunk), rx))
    });
    HttpResponse::Ok().content_type("text/event-stream").insert_header(("Cache-Control", "no-cache")).streaming(stream)
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, body = Object)))]
pub(super) async fn openapi(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(state.openapi.clone())
}
