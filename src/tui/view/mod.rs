//! `view`: draws the model. Reads only; one file per pane. Tables are virtualised: only the
//! rows in the visible window are built, whatever the number of task runs.

mod cost;
mod dead_letters;
mod detail;
mod footer;
mod header;
mod help;
mod jobs;
mod queues;
mod retries;
mod schedules;
mod tasks;
mod workers;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Row, Table, TableState};

use crate::model::{JobState, TaskState};

use super::model::{Mode, Model, TaskRow, View};
use super::update::visible_offset;

pub fn view(model: &Model, frame: &mut Frame) {
    let [top, counts, tabs, body, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header::draw(model, frame, [top, counts, tabs]);
    match &model.mode {
        Mode::Detail(subject) => detail::draw(model, subject, frame, body),
        Mode::Log(id) => detail::draw_log(model, *id, frame, body),
        _ => draw_body(model, frame, body),
    }
    footer::draw(model, frame, status, keys);
    if model.mode == Mode::Help {
        help::draw(frame, body);
    }
}

fn draw_body(model: &Model, frame: &mut Frame, area: Rect) {
    match model.focus {
        View::Queues => queues::draw(model, frame, area),
        View::Jobs => jobs::draw(model, frame, area),
        View::Tasks => tasks::draw(model, frame, area),
        View::Retries => retries::draw(model, frame, area),
        View::DeadLetters => dead_letters::draw(model, frame, area),
        View::Cost => cost::draw(model, frame, area),
        View::Workers => workers::draw(model, frame, area),
        View::Schedules => schedules::draw(model, frame, area),
    }
}

pub fn task_color(state: TaskState) -> Color {
    match state {
        TaskState::Succeeded => Color::Green,
        TaskState::Dead => Color::Red,
        TaskState::Retrying | TaskState::Failed => Color::Yellow,
        TaskState::Running => Color::Cyan,
        TaskState::Queued => Color::Blue,
        TaskState::Waiting => Color::Magenta,
        TaskState::Pending | TaskState::Cancelled | TaskState::Skipped => Color::DarkGray,
    }
}

pub fn job_color(state: JobState) -> Color {
    match state {
        JobState::Running => Color::Cyan,
        JobState::Succeeded => Color::Green,
        JobState::Failed => Color::Red,
        JobState::Cancelled => Color::DarkGray,
    }
}

pub fn task_state_span(state: TaskState) -> Span<'static> {
    Span::styled(state.as_str(), Style::new().fg(task_color(state)))
}

pub fn job_state_span(state: JobState) -> Span<'static> {
    Span::styled(state.as_str(), Style::new().fg(job_color(state)))
}

pub fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

pub fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

/// `$0.0123`.
/// Dollars in at most `USD_WIDTH` characters: every money column is that wide, and an amount
/// is rounded to fit (`$0.02388`), never cut off.
pub fn usd(micros: u64) -> String {
    crate::model::money::format_usd_fit(micros, USD_WIDTH)
}

/// The width of every money column.
pub const USD_WIDTH: usize = 9;

/// `950ms`, `2.4s`, `3m05s`, `2h03m`.
pub fn dur(ms: u64) -> String {
    if ms >= 3_600_000 {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    } else {
        crate::headless::duration(ms)
    }
}

/// A task run's duration in a table: blank before its first attempt, `?` between attempts when
/// the end of the last one was never seen (see [`Model::task_duration`]).
pub fn took(model: &Model, t: &TaskRow) -> String {
    match model.task_duration(t) {
        Some(ms) => dur(ms),
        None if t.rec.started_at_ms.is_some() => "?".to_string(),
        None => String::new(),
    }
}

/// `12s`, `3m`, `2h`, `4d`: how long ago, coarse.
pub fn age(ms: u64) -> String {
    match ms / 1000 {
        s @ 0..=59 => format!("{s}s"),
        s @ 60..=3_599 => format!("{}m", s / 60),
        s @ 3_600..=86_399 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// `·▂▅▇` of `values`, scaled to their maximum, `·` for none. The tallest is `▇`, not `█`: a
/// full cell would touch the bar of the row above and read as one bar two rows high.
pub fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 7] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇'];
    let max = values.iter().copied().max().unwrap_or(0);
    values.iter().map(|&v| if max == 0 || v == 0 { '·' } else { BARS[((v * 7).div_ceil(max) - 1) as usize] }).collect()
}

/// A bar `width` cells wide, the first `filled` in `color`: `━━━━────`. Line glyphs leave a gap
/// above and below in every cell, so full bars on adjacent rows stay two bars (`█` would join
/// them into one block); heavy against light tells filled from empty without colour.
pub fn bar(filled: usize, width: usize, color: Color) -> [Span<'static>; 2] {
    let filled = filled.min(width);
    [Span::styled("━".repeat(filled), Style::new().fg(color)), Span::styled("─".repeat(width - filled), dim())]
}

/// A bordered table of the focused view's rows; builds only the visible window.
pub struct TableSpec<'a> {
    pub view: View,
    pub header: &'a [&'a str],
    pub widths: &'a [Constraint],
}

pub fn draw_table<'r>(
    model: &Model,
    frame: &mut Frame,
    area: Rect,
    spec: TableSpec<'_>,
    row_of: impl Fn(u64) -> Option<Row<'r>>,
) {
    let v = spec.view.index();
    let pane = &model.panes[v];
    let rows = &model.index[v];
    let height = usize::from(area.height.saturating_sub(3));
    let offset = visible_offset(pane.selected, pane.offset.min(rows.len()), height);
    let end = (offset + height).min(rows.len());
    let visible: Vec<Row> = rows[offset.min(end)..end].iter().filter_map(|&id| row_of(id)).collect();
    let sort = spec.view.sort_columns().get(pane.sort).map(|s| {
        let arrow = if pane.reverse { "▼" } else { "▲" };
        format!(" sort {}{arrow} ", s.label())
    });
    let mut title =
        vec![Span::styled(format!(" {} ", spec.view.title()), bold()), Span::raw(format!("({}) ", rows.len()))];
    if !pane.filter.is_empty() {
        title.push(Span::styled(format!("/{} ", pane.filter), Style::new().fg(Color::Yellow)));
    }
    let position =
        if rows.is_empty() { " 0/0 ".to_string() } else { format!(" {}/{} ", pane.selected + 1, rows.len()) };
    let mut block = Block::new().borders(Borders::ALL).border_style(dim()).title(Line::from(title));
    if let Some(sort) = sort {
        block = block.title(Line::styled(sort, dim()).right_aligned());
    }
    block = block.title_bottom(Line::styled(position, dim()).right_aligned());
    let header = Row::new(spec.header.iter().map(|h| Span::styled(*h, bold().fg(Color::Gray))));
    let table = Table::new(visible, spec.widths.to_vec())
        .header(header)
        .block(block)
        .column_spacing(1)
        // Not dark grey: dimmed text and pending/skipped states are dark grey and would vanish.
        .row_highlight_style(Style::new().bg(Color::Indexed(24)).add_modifier(Modifier::BOLD));
    let mut state = TableState::default();
    if !rows.is_empty() {
        state.select(Some(pane.selected.saturating_sub(offset)));
    }
    frame.render_stateful_widget(table, area, &mut state);
}

/// A centered rectangle of at most `w`×`h` inside `area`.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

/// Attempts used in the current series over the maximum (`2/3`; `2/?` before the record is read).
pub fn attempts(r: &crate::tui::rows::TaskRun) -> String {
    crate::headless::tries(u64::from(r.attempts_in_series()), u64::from(r.max_attempts))
}

/// `exit_code 3: detail`, the last failure of a task run.
pub fn last_error(r: &crate::tui::rows::TaskRun) -> String {
    let mut text = r.reason.map_or("", |r| r.as_str()).to_string();
    if let Some(code) = r.exit_code {
        text.push_str(&format!(" {code}"));
    }
    if let Some(detail) = &r.detail {
        text.push_str(&format!(": {detail}"));
    }
    text
}
