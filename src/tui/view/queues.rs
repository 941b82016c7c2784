//! Queues: per queue ready / running / retrying / dead / paused or circuit open (with the time
//! until it closes) or how many queued task runs no node can run, concurrency used/limit, a
//! throughput sparkline (task runs ended per minute, last 20 minutes) and cost today.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

use crate::model::TaskState;

use super::{TableSpec, dim, draw_table, sparkline, task_color, usd};
use crate::tui::model::{Model, View};

const HEADER: &[&str] =
    &["queue", "state", "ready", "running", "retrying", "dead", "used/limit", "ended/min (20m)", "cost today"];
const WIDTHS: &[Constraint] = &[
    Constraint::Min(10),
    Constraint::Length(13),
    Constraint::Length(6),
    Constraint::Length(7),
    Constraint::Length(8),
    Constraint::Length(5),
    Constraint::Length(10),
    Constraint::Length(20),
    Constraint::Length(10),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    let queues: Vec<_> = model.queues.values().collect();
    draw_table(model, frame, area, TableSpec { view: View::Queues, header: HEADER, widths: WIDTHS }, |i| {
        let q = queues.get(i as usize)?;
        let n = |s: TaskState| {
            let v = q.count(s);
            let style = if v == 0 { dim() } else { Style::new().fg(task_color(s)) };
            Cell::from(Span::styled(v.to_string(), style))
        };
        let state = if let Some(until) = q.circuit_open_until_ms {
            let left = super::dur(until.saturating_sub(model.now_ms));
            Span::styled(format!("circuit {left}"), Style::new().fg(Color::Red))
        } else if q.paused {
            Span::styled("paused", Style::new().fg(Color::Yellow))
        } else if q.blocked > 0 {
            // Queued task runs no node has the labels for: `status` and the detail say which.
            Span::styled(format!("{} blocked", q.blocked), Style::new().fg(Color::Magenta))
        } else {
            Span::styled("active", Style::new().fg(Color::Green))
        };
        let limit = if q.concurrency == 0 { "∞".to_string() } else { q.concurrency.to_string() };
        let used = format!("{}/{limit}", q.count(TaskState::Running));
        Some(Row::new(vec![
            Cell::from(q.name.clone()),
            Cell::from(state),
            n(TaskState::Queued),
            n(TaskState::Running),
            n(TaskState::Retrying),
            n(TaskState::Dead),
            Cell::from(used),
            Cell::from(Span::styled(sparkline(&model.throughput_series(q, 20)), Style::new().fg(Color::Cyan))),
            Cell::from(usd(model.queue_cost_today(q))),
        ]))
    });
}
