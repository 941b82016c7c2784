//! The endpoints. Reads go to the store (MVCC snapshots, never blocking the engine); writes go
//! through the `EngineHandle`.

use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::openapi as doc;
use super::request::{self, BODY_LIMIT, CostQuery, Int64, JobsQuery, LogQuery, Request, RequestError};
use super::request::{SignalBody, SubmitBody, TargetBody};
use super::{ApiState, Peer};
use crate::engine::{EngineError, RetryOptions, SubmitRequest, Target};
use crate::report::{self, CostBy, JobFilter, QueryError, TaskFilter};
use crate::store::Snapshot;

/// Every request goes through the peer check, then [`dispatch`]: `request::decode` is the
/// router and the only decoding of paths, queries and bodies.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("").wrap(from_fn(only_our_user)).default_service(web::to(dispatch)));
}

/// Decodes the request and runs the handler of its endpoint.
async fn dispatch(state: web::Data<ApiState>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let body = match payload.to_bytes_limited(BODY_LIMIT).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return refusal(RequestError { status: 400, message: format!("request body: {e}"), allow: None }),
        Err(_) => {
            let message = format!("request body: larger than {BODY_LIMIT} bytes");
            return refusal(RequestError { status: 413, message, allow: None });
        }
    };
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let request = match request::decode(req.method(), req.uri(), content_type, &body) {
        Ok(request) => request,
        Err(e) => return refusal(e),
    };
    match request {
        Request::Status => status(state).await,
        Request::Submit(submit_request) => submit(state, submit_request).await,
        Request::Retry(target, options) => retry(state, target, options).await,
        Request::Cancel(target) => cancel(state, target).await,
        Request::Signal { target, name } => signal(state, target, name).await,
        Request::Pause(queue) => pause(state, queue).await,
        Request::Resume(queue) => resume(state, queue).await,
        Request::Events => events(state).await,
        Request::Snapshot => snapshot(state).await,
        Request::Jobs(filter) => jobs(state, filter).await,
        Request::Tasks(filter) => tasks(state, filter).await,
        Request::Show(target) => show(state, target).await,
        Request::Cost { by, since_ms } => cost(state, by, since_ms).await,
        Request::Logs { task_run, attempt, offset } => logs(state, task_run, attempt, offset).await,
        Request::Live => live(state).await,
        Request::Nodes => nodes(state).await,
        Request::TaskRunsOf(job_run) => task_runs_of(state, job_run).await,
        Request::OpenApi => openapi(state).await,
        Request::Metrics => super::metrics::metrics(state).await,
    }
}

/// A request not understood: JSON with the reason; a 405 names the method it takes (`Allow`).
fn refusal(e: RequestError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = HttpResponse::build(status);
    if let Some(allow) = e.allow {
        response.insert_header((actix_web::http::header::ALLOW, allow.to_string()));
    }
    response.json(json!({"error": e.message}))
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
    let store = state.store.clone();
    let live = state.handle.queues().await.ok();
    let labels = state.handle.labels().to_vec();
    match web::block(move || report::status_value(&store, Some(std::process::id()), live.as_deref(), Some(&labels)))
        .await
    {
        Ok(Ok(value)) => ok_json(&value),
        Ok(Err(e)) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

/// Starts a run of a job (`gaffer submit`); with a `key`, a repeat gets the first run back.
#[utoipa::path(post, path = "/v1/submit", tag = "commands", request_body = SubmitBody, responses(
    (status = 200, body = doc::Submitted), (status = 400, body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn submit(state: web::Data<ApiState>, request: SubmitRequest) -> HttpResponse {
    match state.handle.submit_request(request).await {
        Ok(submitted) => HttpResponse::Ok().json(json!({"job_run": submitted.job_run, "existing": submitted.existing})),
        Err(e) => error(&e),
    }
}

/// Retries a dead or cancelled task run, or every one of a job run (`gaffer retry`).
#[utoipa::path(post, path = "/v1/retry", tag = "commands", request_body = doc::RetryBody, responses(
    (status = 200, body = doc::Message), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
    (status = 409, description = "nothing to retry there", body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn retry(state: web::Data<ApiState>, target: Target, options: RetryOptions) -> HttpResponse {
    answer(state.handle.retry_with(target, options).await)
}

/// Cancels a task run or a job run (`gaffer cancel`).
#[utoipa::path(post, path = "/v1/cancel", tag = "commands", request_body = TargetBody, responses(
    (status = 200, body = doc::Message), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
    (status = 409, description = "nothing to cancel there", body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn cancel(state: web::Data<ApiState>, target: Target) -> HttpResponse {
    answer(state.handle.cancel(target).await)
}

/// Releases task runs waiting for `name`: all of a job run (`j7`) or one task run (`42`).
#[utoipa::path(post, path = "/v1/signal", tag = "commands", request_body = SignalBody, responses(
    (status = 200, body = doc::Message), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
    (status = 409, description = "nothing waits for it there", body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn signal(state: web::Data<ApiState>, target: Target, name: String) -> HttpResponse {
    answer(state.handle.signal(target, &name).await)
}

fn answer(result: Result<String, EngineError>) -> HttpResponse {
    match result {
        Ok(message) => HttpResponse::Ok().json(json!({"message": message})),
        Err(e) => error(&e),
    }
}

/// Holds a queue: nothing more starts from it until `resume`; kept across restarts.
#[utoipa::path(post, path = "/v1/queues/{queue}/pause", tag = "commands", params(("queue" = String, Path, description = "a queue of the workflow")),
    responses((status = 200, body = doc::Message), (status = 404, body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn pause(state: web::Data<ApiState>, queue: String) -> HttpResponse {
    set_paused(&state, &queue, true).await
}

/// Releases a paused queue.
#[utoipa::path(post, path = "/v1/queues/{queue}/resume", tag = "commands", params(("queue" = String, Path, description = "a queue of the workflow")),
    responses((status = 200, body = doc::Message), (status = 404, body = doc::Failure), (status = 503, body = doc::Failure)))]
pub(super) async fn resume(state: web::Data<ApiState>, queue: String) -> HttpResponse {
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
    read: impl FnOnce(&Path, &dyn Snapshot) -> Result<Value, QueryError> + Send + 'static,
) -> HttpResponse {
    let (dir, store) = (state.state_dir.clone(), state.store.clone());
    let answer = web::block(move || read(&dir, &*store.snapshot()?)).await;
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

/// SPEC §4.1 `jobs --json`, filtered by `?state=&job=&limit=`; streamed.
#[utoipa::path(get, path = "/v1/jobs", tag = "read", params(JobsQuery), responses(
    (status = 200, body = Vec<doc::JobRun>), (status = 400, body = doc::Failure)))]
pub(super) async fn jobs(state: web::Data<ApiState>, filter: JobFilter) -> HttpResponse {
    super::stream::json_array(&state, move |reader, emit| report::for_each_job(reader, &filter, emit)).await
}

/// SPEC §4.1 `tasks --json`, filtered by `?state=&job=&queue=` (`?state=dead`: the dead letters).
/// Streamed: an answer of 100,000 task runs never sits whole in memory.
#[utoipa::path(get, path = "/v1/tasks", tag = "read", params(TaskFilter), responses(
    (status = 200, body = Vec<doc::TaskRun>), (status = 400, body = doc::Failure)))]
pub(super) async fn tasks(state: web::Data<ApiState>, mut filter: TaskFilter) -> HttpResponse {
    filter.node_labels = Some(state.handle.labels().to_vec());
    super::stream::json_array(&state, move |reader, emit| report::for_each_task(reader, &filter, emit)).await
}

/// `show ID --json`: a task run (`42`) with its attempts, or a job run (`j7`) with its tasks.
#[utoipa::path(get, path = "/v1/show/{target}", tag = "read",
    params(("target" = String, Path, description = "a task run (`42`) or a job run (`j7`)", pattern = r"^j?[0-9]{1,19}$")),
    responses((status = 200, body = doc::Shown),
        (status = 400, body = doc::Failure), (status = 404, body = doc::Failure)))]
pub(super) async fn show(state: web::Data<ApiState>, target: Target) -> HttpResponse {
    let labels = state.handle.labels().to_vec();
    query(&state, move |_, reader| report::show(reader, target, Some(&labels))).await
}

/// `cost --json`: `?by=job|task|queue|model|day&since_ms=EPOCH_MS`.
#[utoipa::path(get, path = "/v1/cost", tag = "read", params(CostQuery), responses(
    (status = 200, body = doc::Cost), (status = 400, body = doc::Failure)))]
pub(super) async fn cost(state: web::Data<ApiState>, by: CostBy, since_ms: Option<u64>) -> HttpResponse {
    query(&state, move |_, reader| report::cost(reader, by, since_ms)).await
}

/// A piece of an attempt's log from `?offset=` (default the latest attempt, from the start);
/// `logs --follow` asks again from the offset it got until the attempt has ended.
#[utoipa::path(get, path = "/v1/logs/{id}", tag = "read", params(("id" = Int64, Path, description = "a task run"), LogQuery),
    responses((status = 200, body = doc::LogChunk), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
        (status = 409, description = "no attempt has started yet", body = doc::Failure)))]
pub(super) async fn logs(state: web::Data<ApiState>, task_run: u64, attempt: Option<u32>, offset: u64) -> HttpResponse {
    query(&state, move |dir, reader| report::log_chunk(dir, reader, task_run, attempt, offset)).await
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

/// The cluster's nodes with the attempts running on each, for the Workers view of `gaffer tui`
/// (an empty list without a cluster; shape not promised).
#[utoipa::path(get, path = "/v1/nodes", tag = "views", responses(
    (status = 200, body = Vec<Value>), (status = 503, body = doc::Failure)))]
pub(super) async fn nodes(state: web::Data<ApiState>) -> HttpResponse {
    match crate::engine::Control::nodes(&state.handle).await {
        Ok(nodes) => HttpResponse::Ok().json(nodes),
        Err(e) => error(&e),
    }
}

/// A job run's task runs, each as `tasks --json` gives it (what `gaffer tui` loads when a run starts).
#[utoipa::path(get, path = "/v1/job_runs/{id}/tasks", tag = "views", params(("id" = Int64, Path, description = "a job run, without its `j`")),
    responses((status = 200, body = Vec<doc::TaskRun>), (status = 400, body = doc::Failure), (status = 404, body = doc::Failure),
        (status = 503, body = doc::Failure)))]
pub(super) async fn task_runs_of(state: web::Data<ApiState>, job_run: u64) -> HttpResponse {
    match state.handle.task_runs_of(job_run).await {
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
