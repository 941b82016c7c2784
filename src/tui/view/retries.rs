//! Retries: task runs waiting for their retry timer, with a live countdown.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

use super::{TableSpec, attempts, draw_table, dur, last_error};
use crate::tui::model::{Model, View};

const HEADER: &[&str] = &["id", "job.task", "attempt", "next in", "queue", "last error"];
const WIDTHS: &[Constraint] = &[
    Constraint::Length(7),
    Constraint::Min(16),
    Constraint::Length(7),
    Constraint::Length(8),
    Constraint::Length(8),
    Constraint::Fill(2),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::Retries, header: HEADER, widths: WIDTHS }, |id| {
        let r = &model.tasks.get(&id)?.rec;
        let due = r.not_before_ms.map(|t| t.saturating_sub(model.now_ms));
        let countdown = match due {
            Some(0) => "due".to_string(),
            Some(ms) => dur(ms.div_ceil(1000) * 1000),
            None => "?".to_string(),
        };
        Some(Row::new(vec![
            Cell::from(r.id.to_string()),
            Cell::from(format!("{}.{}", r.job, r.label())),
            Cell::from(attempts(r)),
            Cell::from(Span::styled(countdown, Style::new().fg(Color::Yellow))),
            Cell::from(r.queue.clone()),
            Cell::from(Span::styled(last_error(r), Style::new().fg(Color::Red))),
        ]))
    });
}
