//! Tasks: every task run, filterable with `/`, sortable with `s`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

use crate::model::TaskState;

use super::{TableSpec, USD_WIDTH, attempts, dim, draw_table, last_error, task_state_span, took, usd};
use crate::tui::model::{Model, View};

const HEADER: &[&str] = &["id", "job", "task", "state", "try", "queue", "duration", "cost", "progress / error"];
const WIDTHS: &[Constraint] = &[
    Constraint::Length(7),
    Constraint::Min(8),
    Constraint::Min(8),
    Constraint::Length(9),
    Constraint::Length(4),
    Constraint::Length(8),
    Constraint::Length(8),
    Constraint::Length(USD_WIDTH as u16),
    Constraint::Fill(2),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::Tasks, header: HEADER, widths: WIDTHS }, |id| {
        let t = model.tasks.get(&id)?;
        let r = &t.rec;
        let note = match r.state {
            TaskState::Running | TaskState::Succeeded => r.progress.clone().unwrap_or_default(),
            TaskState::Retrying | TaskState::Dead | TaskState::Cancelled => last_error(r),
            _ => String::new(),
        };
        Some(Row::new(vec![
            Cell::from(r.id.to_string()),
            Cell::from(r.job.clone()),
            Cell::from(r.label()),
            Cell::from(task_state_span(r.state)),
            Cell::from(attempts(r)),
            Cell::from(r.queue.clone()),
            Cell::from(took(model, t)),
            Cell::from(usd(r.cost_usd_micros)),
            Cell::from(Span::styled(note, dim())),
        ]))
    });
}
