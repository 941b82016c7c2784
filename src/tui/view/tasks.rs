//! Tasks: every task run, filterable with `/`, sortable with `s`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

use crate::model::TaskState;

use super::{TableSpec, attempts, dim, draw_table, dur, last_error, task_state_span, usd};
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
    Constraint::Length(8),
    Constraint::Fill(2),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::Tasks, header: HEADER, widths: WIDTHS }, |id| {
        let r = &model.tasks.get(&id)?.rec;
        let note = match r.state {
            TaskState::Running | TaskState::Succeeded => r.progress.clone().unwrap_or_default(),
            TaskState::Retrying | TaskState::Dead | TaskState::Cancelled => last_error(r),
            _ => String::new(),
        };
        let duration = if r.started_at_ms.is_some() { dur(model.task_duration(r)) } else { String::new() };
        Some(Row::new(vec![
            Cell::from(r.id.to_string()),
            Cell::from(r.job.clone()),
            Cell::from(r.task.clone()),
            Cell::from(task_state_span(r.state)),
            Cell::from(attempts(r)),
            Cell::from(r.queue.clone()),
            Cell::from(duration),
            Cell::from(usd(r.cost_usd_micros)),
            Cell::from(Span::styled(note, dim())),
        ]))
    });
}
