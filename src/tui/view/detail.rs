//! Enter: the detail of the selected row. A task run's attempts, outputs, cost, progress and log
//! tail; a job run's task graph; a queue's numbers; a worker's attempt. And `l`, the log pane.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use crate::model::TaskState;

use super::jobs::progress;
use super::{age, attempts, bold, dim, dur, job_state_span, last_error, sparkline, task_state_span, took, usd};
use crate::model::workflow_graph::WorkflowGraph;
use crate::tui::job_graph::{self, Bucket, Counts, Row, RunRef};
use crate::tui::model::{Model, Subject, TaskRow};
use crate::tui::rows::ReachedBy;

pub fn draw(model: &Model, subject: &Subject, frame: &mut Frame, area: Rect) {
    match subject {
        Subject::Task(id) => match model.tasks.get(id) {
            Some(t) => task(model, t, frame, area),
            None => gone(frame, area, &format!("task run {id}")),
        },
        Subject::Job(id) => job(model, *id, frame, area),
        Subject::Queue(name) => queue(model, name, frame, area),
        Subject::Worker(id) => worker(model, *id, frame, area),
    }
}

fn gone(frame: &mut Frame, area: Rect, what: &str) {
    frame.render_widget(Paragraph::new(format!("{what} is not known")).block(bordered(what.to_string())), area);
}

fn bordered(title: String) -> Block<'static> {
    Block::new().borders(Borders::ALL).border_style(dim()).title(Line::styled(format!(" {title} "), bold()))
}

fn field(name: &str, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![Span::styled(format!(" {name:<10}"), dim()), Span::raw(value.into())])
}

fn task(model: &Model, t: &TaskRow, frame: &mut Frame, area: Rect) {
    let r = &t.rec;
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!(" #{} {}.{}  ", r.id, r.job, r.label()), bold()),
            task_state_span(r.state),
            Span::styled(
                format!(
                    "  attempt {}  queue {}  priority {}  job run j{}",
                    attempts(r),
                    r.queue,
                    r.priority,
                    r.job_run
                ),
                dim(),
            ),
        ]),
        field("duration", duration(model, t)),
    ];
    if let Some(by) = &r.reached_by {
        lines.push(field("reached", reached(model, by)));
    }
    let model_name = t.model.clone().map(|m| format!(" · {m}")).unwrap_or_default();
    lines.push(field(
        "cost",
        format!("{} · {} in / {} out tokens{model_name}", usd(r.cost_usd_micros), r.input_tokens, r.output_tokens),
    ));
    if let Some(p) = &r.progress {
        lines.push(field("progress", p.clone()));
    }
    if r.state == TaskState::Waiting {
        let name = model
            .shapes
            .get(&r.job)
            .and_then(|j| j.tasks.iter().find(|shape| shape.name == r.task))
            .and_then(|shape| shape.wait_for.clone())
            .unwrap_or_else(|| "?".into());
        lines.push(field("waits for", format!("`{name}`: a approves (or gaffer signal j{} {name})", r.job_run)));
    }
    if !r.requires.is_empty() {
        lines.push(field("requires", r.requires.join(", ")));
    }
    if let Some(reason) = model.blocked_reason(r) {
        lines.push(Line::from(vec![
            Span::styled(" blocked   ", dim()),
            Span::styled(reason, Style::new().fg(Color::Magenta)),
        ]));
    }
    if r.state == TaskState::Retrying {
        let due = r.not_before_ms.map_or(0, |t| t.saturating_sub(model.now_ms));
        lines.push(field("retry in", dur(due)));
    }
    if r.reason.is_some() {
        lines.push(Line::from(vec![
            Span::styled(" error     ", dim()),
            Span::styled(last_error(r), Style::new().fg(Color::Red)),
        ]));
    }
    lines.push(Line::styled(" attempts", bold()));
    for a in t.attempts.iter().rev().take(6) {
        let took = match (a.started_ms, a.ended_ms) {
            (Some(s), Some(e)) => dur(e.saturating_sub(s)),
            // Only the attempt in progress counts on; an ended one whose end was never seen
            // (read from the store between attempts) has no duration to show.
            (Some(s), None) if a.outcome == "running" => dur(model.now_ms.saturating_sub(s)),
            _ => String::new(),
        };
        let outcome = match (a.outcome.as_str(), a.exit_code) {
            ("exit_code", Some(c)) => format!("exit code {c}"),
            (o, Some(c)) => format!("{o} (exit code {c})"),
            (o, None) => o.to_string(),
        };
        let color = match a.outcome.as_str() {
            "succeeded" => Color::Green,
            "running" => Color::Cyan,
            _ => Color::Red,
        };
        lines.push(Line::from(vec![
            Span::styled(format!("   {:>3}  ", a.n), dim()),
            Span::styled(outcome, Style::new().fg(color)),
            Span::styled(format!("  {took}  "), dim()),
            Span::raw(a.detail.clone().unwrap_or_default()),
        ]));
    }
    if !t.warnings.is_empty() {
        lines.push(Line::styled(" warnings", bold()));
        for (n, text) in t.warnings.iter().rev().take(4) {
            lines.push(Line::from(vec![
                Span::styled(format!("   {n:>3}  "), dim()),
                Span::styled(text.clone(), Style::new().fg(Color::Yellow)),
            ]));
        }
    }
    if !r.outputs.is_empty() {
        lines.push(Line::styled(" outputs", bold()));
        for (k, v) in r.outputs.iter().take(8) {
            let v = v.lines().next().unwrap_or_default();
            lines.push(Line::from(vec![Span::styled(format!("   {k} = "), dim()), Span::raw(v.to_string())]));
        }
    }
    let top = (lines.len() as u16 + 2).min(area.height.saturating_sub(4));
    let [head, log_area] = Layout::vertical([Constraint::Length(top), Constraint::Min(3)]).areas(area);
    let title = format!("task run {}", r.id);
    frame.render_widget(Paragraph::new(lines).block(bordered(title)).scroll((model.detail_scroll, 0)), head);
    let log = model.log.as_ref().filter(|l| l.task_run == r.id);
    let title = match log {
        Some(l) => format!("log tail, attempt {} (l follows)", l.attempt),
        None => "log tail".to_string(),
    };
    let text = log.map_or("", |l| l.text.as_str());
    draw_tail(frame, log_area, title, text, 0);
}

/// How a transition reached a task run, as `show jN` says it: `← #12 revise (success)`.
fn reached(model: &Model, by: &ReachedBy) -> String {
    let from = model.tasks.get(&by.from_task_run).map(|f| format!(" {}", f.rec.label())).unwrap_or_default();
    format!("← #{}{from} ({})", by.from_task_run, by.on.as_str())
}

/// The `duration` field of a task run's detail.
fn duration(model: &Model, t: &TaskRow) -> String {
    match model.task_duration(t) {
        Some(ms) => dur(ms),
        None if t.rec.started_at_ms.is_some() => "? (its last attempt ended before this screen opened)".into(),
        None => "not started".into(),
    }
}

/// The last lines of `text` that fit, `scroll_up` lines up from the end.
fn draw_tail(frame: &mut Frame, area: Rect, title: String, text: &str, scroll_up: usize) {
    let height = usize::from(area.height.saturating_sub(2));
    let all: Vec<&str> = text.lines().collect();
    let end = all.len().saturating_sub(scroll_up);
    let start = end.saturating_sub(height);
    let lines: Vec<Line> = all[start..end].iter().map(|l| Line::raw(l.replace('\t', "    "))).collect();
    frame.render_widget(Paragraph::new(lines).block(bordered(title)), area);
}

pub fn draw_log(model: &Model, id: u64, frame: &mut Frame, area: Rect) {
    let t = model.tasks.get(&id);
    let name = t.map_or(String::new(), |t| format!(" {}.{}", t.rec.job, t.rec.label()));
    let state = t.map_or("", |t| t.rec.state.as_str());
    match model.log.as_ref().filter(|l| l.task_run == id) {
        Some(log) => {
            let follow = if log.scroll_up == 0 { "following" } else { "scrolled" };
            let of = t.map_or(log.attempt, |t| t.rec.attempt.max(log.attempt));
            let title =
                format!("log #{id}{name} attempt {} of {of} ([ ] other attempts) · {state} · {follow}", log.attempt);
            draw_tail(frame, area, title, &log.text, log.scroll_up);
        }
        None => draw_tail(frame, area, format!("log #{id}{name}"), "reading…", 0),
    }
}

fn job(model: &Model, id: u64, frame: &mut Frame, area: Rect) {
    let Some(j) = model.jobs.get(&id) else { return gone(frame, area, &format!("job run j{id}")) };
    let r = &j.rec;
    let budget = model
        .shapes
        .get(&r.job)
        .and_then(|s| s.budget_usd_micros)
        .map(|b| format!(" of {}", usd(b)))
        .unwrap_or_default();
    let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut lines = vec![
        Line::from(vec![Span::styled(format!(" j{} {}  ", r.id, r.job), bold()), job_state_span(r.state)]),
        labelled("progress", progress(j.done, j.tasks.len() as u32)),
        field("duration", dur(model.elapsed(r.created_at_ms, r.ended_at_ms))),
        field("cost", format!("{}{budget}", usd(r.cost_usd_micros))),
    ];
    if !params.is_empty() {
        lines.push(field("params", params.join(" ")));
    }
    if let Some(reason) = &r.reason {
        lines.push(Line::from(vec![
            Span::styled(" reason    ", dim()),
            Span::styled(reason.clone(), Style::new().fg(Color::Red)),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::from(vec![
        Span::styled(" task graph", bold()),
        Span::styled(format!("   {}  · Enter expands", job_graph::legend()), dim()),
    ]));
    let top = lines.len();
    let (graph, cursor) = graph_lines(model, j);
    lines.extend(graph);
    // The cursor's line stays in sight: the lines above the graph scroll away first.
    let height = usize::from(area.height.saturating_sub(2)).max(1);
    let scroll = match cursor {
        Some(cursor) => u16::try_from((top + cursor + 1).saturating_sub(height)).unwrap_or(u16::MAX),
        None => model.detail_scroll,
    };
    frame.render_widget(Paragraph::new(lines).block(bordered(format!("job run j{id}"))).scroll((scroll, 0)), area);
}

fn labelled(name: &str, mut line: Line<'static>) -> Line<'static> {
    line.spans.insert(0, Span::styled(format!(" {name:<10}"), dim()));
    line
}

/// The task graph (`job_graph::rows`), one line a row, and the cursor's line. Without the job's
/// shape (another workflow), one line per task run and no cursor (`j`/`k` scroll).
fn graph_lines(model: &Model, j: &crate::tui::model::JobRow) -> (Vec<Line<'static>>, Option<usize>) {
    let Some((graph, rows)) = job_graph::of_job(model, j) else {
        let runs = j.tasks.iter().filter_map(|id| model.tasks.get(id));
        let lines = runs.map(|t| run_line(model, ("●", 1), &job_graph::run_ref(t).label, t)).collect();
        return (lines, None);
    };
    let cursor = model.graph_cursor.min(rows.len().saturating_sub(1));
    let widest = rows.iter().map(|r| branch_of(r).chars().count()).max().unwrap_or(1);
    let lines = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut line = graph_row(model, &graph, row, widest);
            if i == cursor {
                line.spans[0] = Span::styled(" ▸", bold().fg(Color::Cyan));
                let named = 3.min(line.spans.len());
                for span in &mut line.spans[1..named] {
                    span.style = span.style.add_modifier(Modifier::REVERSED);
                }
            }
            line
        })
        .collect();
    (lines, Some(cursor))
}

fn branch_of(row: &Row) -> &str {
    match row {
        Row::Task { branch, .. } | Row::Instance { branch, .. } | Row::Back { branch, .. } => branch,
    }
}

/// One row of the graph: a task (its run, its counts, or not reached), one of its runs, or a
/// transition back up (`↺ review  on failure`). Names line up in one column whatever the indent.
fn graph_row(model: &Model, graph: &WorkflowGraph, row: &Row, widest: usize) -> Line<'static> {
    let branch = branch_of(row);
    let name_width = (17 + widest).saturating_sub(branch.chars().count());
    match row {
        Row::Back { edge, .. } => Line::from(vec![
            Span::raw("  "),
            Span::styled(format!(" {branch} "), dim()),
            Span::styled(format!("{:<name_width$} ", graph.name(edge.to)), Style::new().fg(Color::Magenta)),
            Span::styled(format!("loops back {}", edge.condition()), dim()),
        ]),
        Row::Instance { run, .. } => match model.tasks.get(&run.id) {
            Some(t) => {
                let mut line = run_line(model, (branch, widest), &format!("  {}", run.label), t);
                if run.compensation {
                    line.spans[2].style = Style::new().fg(Color::Magenta);
                }
                line
            }
            None => Line::raw(""),
        },
        Row::Task { task, incoming, runs, grouped, expanded, .. } => {
            let name = graph.name(*task);
            let mut line = match (runs.as_slice(), grouped) {
                ([], _) => Line::from(vec![
                    Span::raw("  "),
                    Span::styled(format!(" {branch} "), dim()),
                    Span::styled(format!("{name:<name_width$} "), dim()),
                    Span::styled(format!("{:<RUN_COLUMNS$}", "not reached"), dim()),
                ]),
                ([one], false) => match model.tasks.get(&one.id) {
                    Some(t) => run_line(model, (branch, widest), &one.label, t),
                    None => Line::raw(""),
                },
                (runs, _) => group_line(model, (branch, widest), name, runs, *expanded),
            };
            let mut from: Vec<String> = incoming.iter().map(|e| e.describe(graph)).collect();
            if let Some(mark) = job_graph::join_mark(graph, *task) {
                from.insert(0, mark);
            }
            if !from.is_empty() {
                line.spans.push(Span::styled(format!("  ← {}", from.join(", ")), dim()));
            }
            line
        }
    }
}

/// `review ×12  9✓ 2⟳ 1✗  undo 1✓`: a task with several runs as one node, its cost summed.
fn group_line(
    model: &Model,
    (branch, widest): (&str, usize),
    name: &str,
    runs: &[RunRef],
    expanded: bool,
) -> Line<'static> {
    let (undo, own): (Vec<&RunRef>, Vec<&RunRef>) = runs.iter().partition(|r| r.compensation);
    let fold = if expanded { "▾" } else { "▸" };
    let label = format!("{name} ×{} {fold}", own.len());
    let width = (17 + widest).saturating_sub(branch.chars().count());
    let mut spans =
        vec![Span::raw("  "), Span::styled(format!(" {branch} "), dim()), Span::raw(format!("{label:<width$} "))];
    let mut used = counts(&mut spans, &own);
    if !undo.is_empty() {
        spans.push(Span::styled("undo ", Style::new().fg(Color::Magenta)));
        used += 5 + counts(&mut spans, &undo);
    }
    let cost: u64 = runs.iter().filter_map(|r| model.tasks.get(&r.id)).map(|t| t.rec.cost_usd_micros).sum();
    let pad = (RUN_COLUMNS - 18).saturating_sub(used);
    spans.push(Span::styled(format!("{:pad$} {:>7} {:>9}", "", "", usd(cost)), dim()));
    Line::from(spans)
}

/// Adds `9✓ 2⟳ 1✗ ` in colour; returns how many characters it took.
fn counts(spans: &mut Vec<Span<'static>>, runs: &[&RunRef]) -> usize {
    let mut used = 0;
    for (bucket, n) in Counts::of(runs.iter().map(|r| r.state)).parts() {
        let text = format!("{n}{} ", bucket.glyph());
        used += text.chars().count();
        spans.push(Span::styled(text, Style::new().fg(bucket_color(bucket))));
    }
    used
}

fn bucket_color(bucket: Bucket) -> Color {
    match bucket {
        Bucket::Succeeded => Color::Green,
        Bucket::Active => Color::Cyan,
        Bucket::Failed => Color::Red,
        Bucket::Skipped => Color::DarkGray,
    }
}

/// How wide a run's columns are after its name (state, id, tries, time, cost): a node with
/// counts and a task not reached are padded to it, so the edges (`← …`) line up.
const RUN_COLUMNS: usize = 46;

/// One task run: state, id, tries, time, cost. `branch` is `(this line's, the widest's)`.
fn run_line(model: &Model, (branch, widest): (&str, usize), label: &str, t: &TaskRow) -> Line<'static> {
    let width = (17 + widest).saturating_sub(branch.chars().count());
    let r = &t.rec;
    let pad = 10usize.saturating_sub(r.state.as_str().len());
    Line::from(vec![
        Span::raw("  "),
        Span::styled(format!(" {branch} "), dim()),
        Span::raw(format!("{label:<width$} ")),
        task_state_span(r.state),
        Span::styled(
            format!(
                "{:pad$} #{:<6} try {:<5} {:>7} {:>9}",
                "",
                r.id,
                attempts(r),
                took(model, t),
                usd(r.cost_usd_micros)
            ),
            dim(),
        ),
    ])
}

fn queue(model: &Model, name: &str, frame: &mut Frame, area: Rect) {
    let Some(q) = model.queues.get(name) else { return gone(frame, area, &format!("queue {name}")) };
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!(" {name}  "), bold()),
            if q.paused {
                Span::styled("paused", Style::new().fg(Color::Yellow))
            } else {
                Span::styled("active", Style::new().fg(Color::Green))
            },
        ]),
        field(
            "limit",
            if q.concurrency == 0 { "unlimited".to_string() } else { format!("{} at a time", q.concurrency) },
        ),
        field("cost today", usd(model.queue_cost_today(q))),
        field("unroutable", format!("{} queued that no node has the labels for", q.blocked)),
        field("ended/min", sparkline(&model.throughput_series(q, 60))),
        Line::raw(""),
    ];
    for s in TaskState::ALL {
        lines.push(Line::from(vec![
            Span::styled(format!(" {:<10}", s.as_str()), dim()),
            Span::styled(q.count(s).to_string(), Style::new().fg(super::task_color(s))),
        ]));
    }
    frame.render_widget(Paragraph::new(lines).block(bordered(format!("queue {name}"))), area);
}

fn worker(model: &Model, id: usize, frame: &mut Frame, area: Rect) {
    let Some(w) = model.workers.iter().find(|w| w.snap.id == id) else {
        return gone(frame, area, &format!("worker {id}"));
    };
    let mut lines = vec![field("worker", format!("w{id}")), field("restarts", w.snap.restarts.to_string())];
    match w.snap.current {
        None => lines.push(field("state", "idle")),
        Some(c) => {
            let task =
                model.tasks.get(&c.task_run).map_or(String::new(), |t| format!(" {}.{}", t.rec.job, t.rec.label()));
            lines.push(field("running", format!("#{}{task} attempt {}", c.task_run, c.attempt)));
            lines.push(field("pid", c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())));
            lines.push(field("for", dur(model.now_ms.saturating_sub(c.started_ms))));
            lines.push(field("heartbeat", format!("{} ago", age(model.now_ms.saturating_sub(c.last_activity_ms)))));
        }
    }
    frame
        .render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(bordered(format!("worker w{id}"))), area);
}
