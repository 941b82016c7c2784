//! The endpoints. Reads go to the store (MVCC snapshots, never blocking the engine); writes go
//! through the `EngineHandle`.

use std::collections::BTreeMap;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, Peer};
use crate::engine::{EngineError, Target};
use crate::report;

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
    None
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
    match web::block(move || report::status_value(&dir)).await {
        Ok(Ok(value)) => HttpResponse::Ok().json(value),
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

async fn retry(state: web::Data<ApiState>, body: web::Json<TargetBody>) -> HttpResponse {
    match Target::parse(&body.target) {
        Ok(t) => answer(state.handle.retry(t).await),
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
        Ok(snapshot) => HttpResponse::Ok().json(snapshot),
        Err(e) => error(&e),
    }
}

/// Runs a read of the store off the server's thread; `None` from `read` is a 404.
async fn read_store(
    state: &ApiState,
    read: impl FnOnce(&crate::store::Reader) -> Result<Option<serde_json::Value>, crate::store::StoreError> + Send + 'static,
) -> HttpResponse {
    let dir = state.state_dir.clone();
    let answer = web::block(move || crate::store::open_reader(&dir).and_then(|reader| read(&reader))).await;
    match answer {
        Ok(Ok(Some(value))) => HttpResponse::Ok().json(value),
        Ok(Ok(None)) => HttpResponse::NotFound().json(json!({"error": "no such id"})),
        Ok(Err(e)) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct Filter {
    state: Option<String>,
    job: Option<String>,
    queue: Option<String>,
}

/// SPEC §4.1 `jobs --json`, filtered by `?state=`.
async fn jobs(state: web::Data<ApiState>, filter: web::Query<Filter>) -> HttpResponse {
    let wanted = filter.into_inner().state;
    read_store(&state, move |reader| {
        let runs = reader.job_runs()?.into_iter().filter(|j| wanted.as_deref().is_none_or(|w| j.state.as_str() == w));
        Ok(Some(serde_json::Value::Array(runs.map(|j| report::job_json(&j)).collect())))
    })
    .await
}

/// SPEC §4.1 `tasks --json`, filtered by `?state=&job=&queue=`.
async fn tasks(state: web::Data<ApiState>, filter: web::Query<Filter>) -> HttpResponse {
    let f = filter.into_inner();
    read_store(&state, move |reader| {
        let runs = reader.task_runs()?.into_iter().filter(|t| {
            f.state.as_deref().is_none_or(|w| t.state.as_str() == w)
                && f.job.as_ref().is_none_or(|j| &t.job == j)
                && f.queue.as_ref().is_none_or(|q| &t.queue == q)
        });
        Ok(Some(serde_json::Value::Array(runs.map(|t| report::task_json(&t)).collect())))
    })
    .await
}

/// `show ID --json`: a task run (`42`) with its attempts, or a job run (`j7`) with its tasks.
async fn show(state: web::Data<ApiState>, target: web::Path<String>) -> HttpResponse {
    match Target::parse(&target) {
        Ok(Target::TaskRun(id)) => read_store(&state, move |reader| report::task_detail(reader, id)).await,
        Ok(Target::JobRun(id)) => read_store(&state, move |reader| report::job_detail(reader, id)).await,
        Err(message) => bad_target(message),
    }
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

/// Server-sent events: every engine event from now on, one `data:` line each.
async fn events(state: web::Data<ApiState>) -> HttpResponse {
    let receiver = match state.handle.subscribe().await {
        Ok(receiver) => receiver,
        Err(e) => return error(&e),
    };
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        let chunk = web::Bytes::from(format!("data: {}\n\n", event.to_json()));
        Some((Ok::<_, actix_web::Error>(chunk), receiver))
    });
    HttpResponse::Ok().content_type("text/event-stream").insert_header(("Cache-Control", "no-cache")).streaming(stream)
}
