//! Workers: each worker slot, its current attempt, heartbeat age and restarts.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

use super::{TableSpec, age, dim, draw_table, dur};
use crate::tui::model::{Model, View};

const HEADER: &[&str] = &["worker", "state", "task run", "attempt", "pid", "running", "heartbeat", "restarts"];
const WIDTHS: &[Constraint] = &[
    Constraint::Length(6),
    Constraint::Length(5),
    Constraint::Min(20),
    Constraint::Length(7),
    Constraint::Length(8),
    Constraint::Length(8),
    Constraint::Length(9),
    Constraint::Length(8),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::Workers, header: HEADER, widths: WIDTHS }, |id| {
        let w = model.workers.iter().find(|w| w.snap.id as u64 == id)?;
        let restarts = Span::styled(
            w.snap.restarts.to_string(),
            if w.snap.restarts > 0 { Style::new().fg(Color::Yellow) } else { dim() },
        );
        let Some(c) = w.snap.current else {
            return Some(Row::new(vec![
                Cell::from(format!("w{}", w.snap.id)),
                Cell::from(Span::styled("idle", dim())),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(restarts),
            ]));
        };
        let task = model.tasks.get(&c.task_run).map_or(String::new(), |t| format!(" {}.{}", t.rec.job, t.rec.label()));
        let silent = model.now_ms.saturating_sub(c.last_activity_ms);
        let heartbeat_style = if silent > 60_000 { Style::new().fg(Color::Red) } else { Style::new() };
        Some(Row::new(vec![
            Cell::from(format!("w{}", w.snap.id)),
            Cell::from(Span::styled("busy", Style::new().fg(Color::Cyan))),
            Cell::from(format!("#{}{task}", c.task_run)),
            Cell::from(c.attempt.to_string()),
            Cell::from(c.pid.map(|p| p.to_string()).unwrap_or_default()),
            Cell::from(dur(model.now_ms.saturating_sub(c.started_ms))),
            Cell::from(Span::styled(format!("{} ago", age(silent)), heartbeat_style)),
            Cell::from(restarts),
        ]))
    });
}
