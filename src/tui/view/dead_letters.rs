//! Dead letters: task runs that wait for a person. `r` requeues, `c` cancels for good.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

use super::{TableSpec, USD_WIDTH, age, dim, draw_table, usd};
use crate::tui::model::{Model, View};

const HEADER: &[&str] = &["id", "job.task", "reason", "attempts", "cost", "when", "detail"];
const WIDTHS: &[Constraint] = &[
    Constraint::Length(7),
    Constraint::Min(16),
    Constraint::Length(17),
    Constraint::Length(8),
    Constraint::Length(USD_WIDTH as u16),
    Constraint::Length(8),
    Constraint::Fill(2),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::DeadLetters, header: HEADER, widths: WIDTHS }, |id| {
        let r = &model.tasks.get(&id)?.rec;
        let mut reason = r.reason.map_or("failed", |r| r.as_str()).to_string();
        if let Some(code) = r.exit_code {
            reason.push_str(&format!(" {code}"));
        }
        let when = r.ended_at_ms.map(|t| format!("{} ago", age(model.now_ms.saturating_sub(t)))).unwrap_or_default();
        Some(Row::new(vec![
            Cell::from(r.id.to_string()),
            Cell::from(format!("{}.{}", r.job, r.label())),
            Cell::from(Span::styled(reason, Style::new().fg(Color::Red))),
            Cell::from(r.attempt.to_string()),
            Cell::from(usd(r.cost_usd_micros)),
            Cell::from(when),
            Cell::from(Span::styled(r.detail.clone().unwrap_or_default(), dim())),
        ]))
    });
}
