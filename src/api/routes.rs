//! The endpoints. Reads go to the store (MVCC snapshots, never blocking the engine); writes go
//! through the `EngineHandle`.

use std::collections::BTreeMap;
use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, Peer};
use crate::engine::{EngineError, Target};
use crate::report::{self, CostBy, JobFilter, QueryError, TaskFilter};
use crate::store::Reader;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("")
            .wrap(from_fn(only_our_user))
            .route("/v1/status", web::get().to(status))
            .route("/v1/submit", web::post().to(submit))
            .route("/v1/retry", web::post().to(retry))
            .route("/v1/cancel", web::post().to(cancel))
            .route("/v1/signal", web::post().to(signal))
            .route("/v1/queues/{queue}/pause", web::post().to(pause))
            .route("/v1/queues/{queue}/resume", web::post().to(resume))
            .route("/v1/events", web::get().to(events))
            .route("/v1/snapshot", web::get().to(snapshot))
            .route("/v1/jobs", web::get().to(jobs))
            .route("/v1/tasks", web::get().to(tasks))
            .route("/v1/show/{target}", web::get().to(show))
            .route("/v1/cost", web::get().to(cost))
            .route("/v1/logs/{id}", web::get().to(logs))
            .route("/v1/live", web::get().to(live))
            .route("/v1/job_runs/{id}/tasks", web::get().to(task_runs_of))
            .route("/metrics", web::get().to(super::metrics::metrics)),
    );
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
        Some(response) => Ok(req.into_response(response).map_into_right_body()),
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
        EngineError::UnknownId(_) => HttpResponse::NotFound().json(body),
        _ => HttpResponse::ServiceUnavailable().json(body),
    }
}

async fn status(state: web::Data<ApiState>) -> HttpResponse {
    let dir = state.state_dir.clone();
    let live = state.handle.queues().await.ok();
    match web::block(move || report::status_value(&dir, live.as_deref())).await {
        Ok(Ok(value)) => ok_json(&value),
        Ok(Err(e)) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct SubmitBody {
    job: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    priority: Option<u8>,
    key: Option<String>,
}

async fn submit(state: web::Data<ApiState>, body: web::Json<SubmitBody>) -> HttpResponse {
    let body = body.into_inner();
    let request =
        crate::engine::SubmitRequest { job: body.job, params: body.params, priority: body.priority, key: body.key };
    match state.handle.submit_request(request).await {
        Ok(submitted) => HttpResponse::Ok().json(json!({"job_run": submitted.job_run, "existing": submitted.existing})),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct TargetBody {
    target: String,
}

fn bad_target(message: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message}))
}

/// `{"target": "j7", "from": "TASK", "definition": "current"}`: the last two optional.
#[derive(Deserialize)]
struct RetryBody {
    target: String,
    #[serde(flatten)]
    options: crate::engine::RetryOptions,
}

async fn retry(state: web::Data<ApiState>, body: web::Json<RetryBody>) -> HttpResponse {
    let body = body.into_inner();
    match Target::parse(&body.target) {
        Ok(t) => answer(state.handle.retry_with(t, body.options).await),
        Err(message) => bad_target(message),
    }
}

async fn cancel(state: web::Data<ApiState>, body: web::Json<TargetBody>) -> HttpResponse {
    match Target::parse(&body.target) {
        Ok(t) => answer(state.handle.cancel(t).await),
        Err(message) => bad_target(message),
    }
}

#[derive(Deserialize)]
struct SignalBody {
    target: String,
    name: String,
}

/// Releases task runs waiting for `name`: all of a job run (`j7`) or one task run (`42`).
async fn signal(state: web::Data<ApiState>, body: web::Json<SignalBody>) -> HttpResponse {
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

async fn pause(state: web::Data<ApiState>, queue: web::Path<String>) -> HttpResponse {
    set_paused(&state, &queue, true).await
}

async fn resume(state: web::Data<ApiState>, queue: web::Path<String>) -> HttpResponse {
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

/// Everything a view draws its first frame from (`gaffer tui`).
async fn snapshot(state: web::Data<ApiState>) -> HttpResponse {
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
        Ok(Err(QueryError::NotFound(message))) => HttpResponse::NotFound().json(json!({"error": message})),
        Ok(Err(QueryError::Invalid(message))) => HttpResponse::BadRequest().json(json!({"error": message})),
        Ok(Err(e)) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

/// SPEC §4.1 `jobs --json`, filtered by `?state=&job=&limit=`.
async fn jobs(state: web::Data<ApiState>, filter: web::Query<JobFilter>) -> HttpResponse {
    let filter = filter.into_inner();
    query(&state, move |_, reader| report::jobs(reader, &filter)).await
}

/// SPEC §4.1 `tasks --json`, filtered by `?state=&job=&queue=` (`?state=dead`: the dead letters).
async fn tasks(state: web::Data<ApiState>, filter: web::Query<TaskFilter>) -> HttpResponse {
    let filter = filter.into_inner();
    query(&state, move |_, reader| report::tasks(reader, &filter)).await
}

/// `show ID --json`: a task run (`42`) with its attempts, or a job run (`j7`) with its tasks.
async fn show(state: web::Data<ApiState>, target: web::Path<String>) -> HttpResponse {
    match Target::parse(&target) {
        Ok(target) => query(&state, move |_, reader| report::show(reader, target)).await,
        Err(message) => bad_target(message),
    }
}

#[derive(Deserialize)]
struct CostQuery {
    by: Option<CostBy>,
    since_ms: Option<u64>,
}

/// `cost --json`: `?by=job|task|queue|model|day&since_ms=EPOCH_MS`.
async fn cost(state: web::Data<ApiState>, q: web::Query<CostQuery>) -> HttpResponse {
    let q = q.into_inner();
    query(&state, move |_, reader| report::cost(reader, q.by.unwrap_or(CostBy::Job), q.since_ms)).await
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<u32>,
    #[serde(default)]
    offset: u64,
}

/// A piece of an attempt's log from `?offset=` (default the latest attempt, from the start);
/// `logs --follow` asks again from the offset it got until the attempt has ended.
async fn logs(state: web::Data<ApiState>, id: web::Path<u64>, q: web::Query<LogQuery>) -> HttpResponse {
    let (id, q) = (id.into_inner(), q.into_inner());
    query(&state, move |dir, reader| report::log_chunk(dir, reader, id, q.attempt, q.offset)).await
}

/// Workers and queues, for a view's once-a-second refresh.
async fn live(state: web::Data<ApiState>) -> HttpResponse {
    match state.handle.queues().await {
        Ok(queues) => HttpResponse::Ok().json((state.handle.workers(), queues)),
        Err(e) => error(&e),
    }
}

async fn task_runs_of(state: web::Data<ApiState>, id: web::Path<u64>) -> HttpResponse {
    match state.handle.task_runs_of(*id).await {
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

/// Server-sent events: every engine event from now on, one `data:` line each.
async fn events(state: web::Data<ApiState>) -> HttpResponse {
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
