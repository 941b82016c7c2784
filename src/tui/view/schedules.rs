//! Schedules: each scheduled job's cron line and zone, its next fire time and the last one
//! (fire times are `gaffer serve`'s; the last one comes from the store).

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row};

use super::{TableSpec, age, dim, draw_table, dur};

/// How long until a fire time: `45s`, `3h05m`, `5d19h` (a weekly job is days away).
fn until(ms: u64) -> String {
    const DAY_MS: u64 = 86_400_000;
    if ms >= 2 * DAY_MS { format!("{}d{:02}h", ms / DAY_MS, (ms % DAY_MS) / 3_600_000) } else { dur(ms) }
}
use crate::tui::model::{Model, View};

const HEADER: &[&str] = &["job", "schedule", "zone", "next fire", "last fire"];
const WIDTHS: &[Constraint] = &[
    Constraint::Min(8),
    Constraint::Length(15),
    Constraint::Length(14),
    Constraint::Length(28),
    Constraint::Length(28),
];

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::Schedules, header: HEADER, widths: WIDTHS }, |id| {
        let row = model.schedules.get(usize::try_from(id).ok()?)?;
        let zone = row.schedule.as_ref().map_or_else(|| row.timezone.clone().unwrap_or_default(), |s| s.zone_name());
        let when = |ms: u64| row.schedule.as_ref().map_or_else(String::new, |s| s.local_short(ms));
        let next = match model.next_fire(row) {
            Some(ms) => Line::from(vec![
                Span::raw(when(ms)),
                Span::styled(format!(" in {}", until(ms.saturating_sub(model.now_ms))), dim()),
            ]),
            None => Line::styled("never", dim()),
        };
        let last = match row.last_ms {
            Some(ms) => {
                let mut spans = vec![
                    Span::raw(when(ms)),
                    Span::styled(format!(" {} ago", age(model.now_ms.saturating_sub(ms))), dim()),
                ];
                if row.last_skipped {
                    spans.push(Span::styled(" skipped", Style::new().fg(Color::Yellow)));
                }
                Line::from(spans)
            }
            None => Line::styled("not yet", dim()),
        };
        Some(Row::new(vec![
            Cell::from(row.job.clone()),
            Cell::from(row.expression.clone()),
            Cell::from(zone),
            Cell::from(next),
            Cell::from(last),
        ]))
    });
}
