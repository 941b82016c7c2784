//! Jobs: job runs with state, progress (done/total task runs), duration and cost.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row};

use super::{TableSpec, bar, dim, draw_table, dur, job_state_span, usd};
use crate::tui::model::{Model, View};

const HEADER: &[&str] = &["run", "job", "state", "progress", "duration", "cost", "reason"];
const WIDTHS: &[Constraint] = &[
    Constraint::Length(6),
    Constraint::Min(12),
    Constraint::Length(9),
    Constraint::Length(18),
    Constraint::Length(8),
    Constraint::Length(9),
    Constraint::Fill(2),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::Jobs, header: HEADER, widths: WIDTHS }, |id| {
        let j = model.jobs.get(&id)?;
        let r = &j.rec;
        let total = j.tasks.len() as u32;
        Some(Row::new(vec![
            Cell::from(format!("j{}", r.id)),
            Cell::from(r.job.clone()),
            Cell::from(job_state_span(r.state)),
            Cell::from(progress(j.done, total)),
            Cell::from(dur(model.elapsed(r.created_at_ms, r.ended_at_ms))),
            Cell::from(usd(r.cost_usd_micros)),
            Cell::from(Span::styled(r.reason.clone().unwrap_or_default(), dim())),
        ]))
    });
}

/// `━━━━━─── 5/8`.
pub fn progress(done: u32, total: u32) -> Line<'static> {
    const WIDTH: u32 = 8;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0);
    let mut spans = bar(filled as usize, WIDTH as usize, Color::Green).to_vec();
    spans.push(Span::raw(format!(" {done}/{total}")));
    Line::from(spans)
}
