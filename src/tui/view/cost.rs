//! Cost: totals, burn rate and a per-minute sparkline; spend per job, queue, model and task;
//! budget gauges for job runs and task runs that have a budget.

use std::collections::BTreeMap;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table};

use crate::model::TaskState;

use super::{bar, bold, dim, usd};
use crate::tui::model::{COST_HISTORY_MINUTES, Model};

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    let budgets = budgets(model);
    let gauge_rows = if budgets.is_empty() { 0 } else { budgets.len().min(4) as u16 + 2 };
    let [top, tables, gauges] =
        Layout::vertical([Constraint::Length(4), Constraint::Min(4), Constraint::Length(gauge_rows)]).areas(area);
    draw_totals(model, frame, top);
    let [upper, lower] = Layout::vertical([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(tables);
    let [a, b] = Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(upper);
    let [c, d] = Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(lower);
    let total = model.cost.total;
    breakdown(frame, a, "by job", &model.cost.by_job, total);
    breakdown(frame, b, "by queue", &model.cost.by_queue, total);
    breakdown(frame, c, "by model", &model.cost.by_model, total);
    breakdown(frame, d, "by task", &model.cost.by_task, total);
    draw_budgets(frame, gauges, &budgets);
}

fn draw_totals(model: &Model, frame: &mut Frame, area: Rect) {
    let c = &model.cost;
    let tokens = tokens_line(&c.tokens);
    let width = (tokens.chars().count() as u16 + 12).max(34);
    let [left, right] = Layout::horizontal([Constraint::Length(width), Constraint::Min(10)]).areas(area);
    let today: u64 = model.queues.values().map(|q| model.queue_cost_today(q)).fold(0, u64::saturating_add);
    let lines = vec![
        Line::from(vec![Span::styled(" total     ", dim()), Span::styled(usd(c.total), bold().fg(Color::Yellow))]),
        Line::from(vec![Span::styled(" today     ", dim()), Span::raw(usd(today))]),
        Line::from(vec![
            Span::styled(" burn rate ", dim()),
            Span::raw(format!("{}/h (last 10m)", usd(model.burn_per_hour()))),
        ]),
        Line::from(vec![Span::styled(" tokens    ", dim()), Span::raw(tokens)]),
    ];
    frame.render_widget(Paragraph::new(lines), left);
    // One column per minute, as many minutes as the box is wide, the current one at the right
    // edge. Stretching a fixed hour instead would draw some minutes one column wide and others
    // two, and change the time scale with the terminal; at one minute a column "how long ago"
    // reads the same at any width, and a wider box shows more of the trend behind the burn rate.
    let minutes = u64::from(right.width.saturating_sub(2)).clamp(1, COST_HISTORY_MINUTES);
    let series = model.cost_series(minutes);
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(dim())
        .title(Line::styled(format!(" cost per minute, last {minutes}m "), dim()));
    frame.render_widget(Sparkline::default().block(block).data(&series).style(Style::new().fg(Color::Yellow)), right);
}

/// `1200 in / 340 out`, and the prompt-cache tokens when there were any.
fn tokens_line(t: &crate::model::cost::Usage) -> String {
    let mut line = format!("{} in / {} out", t.input_tokens, t.output_tokens);
    if t.cache_read_tokens > 0 || t.cache_write_tokens > 0 {
        line.push_str(&format!(" / {} cache read / {} cache write", t.cache_read_tokens, t.cache_write_tokens));
    }
    line
}

fn breakdown(frame: &mut Frame, area: Rect, title: &str, values: &BTreeMap<String, u64>, total: u64) {
    let mut sorted: Vec<(&String, &u64)> = values.iter().filter(|(_, v)| **v > 0).collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let height = usize::from(area.height.saturating_sub(2));
    let rows: Vec<Row> = sorted
        .into_iter()
        .take(height)
        .map(|(name, v)| {
            let share = (u128::from(*v) * 100).checked_div(u128::from(total)).unwrap_or(0);
            Row::new(vec![Span::raw(name.clone()), Span::raw(usd(*v)), Span::styled(format!("{share:>3}%"), dim())])
        })
        .collect();
    let block =
        Block::new().borders(Borders::ALL).border_style(dim()).title(Line::styled(format!(" {title} "), bold()));
    let widths = [Constraint::Min(8), Constraint::Length(10), Constraint::Length(4)];
    frame.render_widget(Table::new(rows, widths).block(block), area);
}

/// `(label, spent, limit)` of budgets worth watching: running job runs first, then the latest.
fn budgets(model: &Model) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for j in model.jobs.values().rev() {
        let Some(limit) = model.shapes.get(&j.rec.job).and_then(|s| s.budget_usd_micros) else { continue };
        out.push((format!("j{} {}", j.rec.id, j.rec.job), j.rec.cost_usd_micros, limit, j.rec.state.is_terminal()));
        if out.len() >= 8 {
            break;
        }
    }
    for t in model.tasks.values().rev().filter(|t| t.rec.state == TaskState::Running).take(8) {
        let shape = model.shapes.get(&t.rec.job).and_then(|s| s.tasks.iter().find(|x| x.name == t.rec.task));
        if let Some(limit) = shape.and_then(|s| s.budget_usd_micros) {
            out.push((format!("#{} {}.{}", t.rec.id, t.rec.job, t.rec.label()), t.rec.cost_usd_micros, limit, false));
        }
    }
    out.sort_by_key(|b| b.3);
    out.into_iter().map(|(l, s, m, _)| (l, s, m)).collect()
}

fn draw_budgets(frame: &mut Frame, area: Rect, budgets: &[(String, u64, u64)]) {
    if area.height < 3 {
        return;
    }
    let block = Block::new().borders(Borders::ALL).border_style(dim()).title(Line::styled(" budgets ", bold()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rows = Layout::vertical(vec![Constraint::Length(1); usize::from(inner.height)]).split(inner);
    for ((label, spent, limit), row) in budgets.iter().zip(rows.iter()) {
        let ratio = if *limit == 0 { 1.0 } else { (*spent as f64 / *limit as f64).min(1.0) };
        let color = match ratio {
            r if r >= 1.0 => Color::Red,
            r if r >= 0.8 => Color::Yellow,
            _ => Color::Green,
        };
        let [name, gauge] = Layout::horizontal([Constraint::Length(24), Constraint::Min(10)]).areas(*row);
        frame.render_widget(Paragraph::new(format!(" {label}")), name);
        let width = usize::from(gauge.width.saturating_sub(30)).clamp(4, 40);
        let filled = ((ratio * width as f64).round() as usize).min(width);
        let mut spans = bar(filled, width, color).to_vec();
        spans.push(Span::raw(format!(" {:>3.0}%  {} of {}", ratio * 100.0, usd(*spent), usd(*limit))));
        let line = Line::from(spans);
        frame.render_widget(Paragraph::new(line), gauge);
    }
}
