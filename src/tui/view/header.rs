//! The always-visible top: title, workers busy/total, counts per state, total cost; then tabs.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::model::TaskState;

use super::{bold, dim, task_color, usd};
use crate::tui::model::{Model, Session, View};

/// The order states are counted in the header.
const ORDER: [TaskState; 10] = [
    TaskState::Running,
    TaskState::Queued,
    TaskState::Pending,
    TaskState::Retrying,
    TaskState::Waiting,
    TaskState::Dead,
    TaskState::Failed,
    TaskState::Succeeded,
    TaskState::Cancelled,
    TaskState::Skipped,
];

pub fn draw(model: &Model, frame: &mut Frame, [top, counts, tabs]: [Rect; 3]) {
    let sep = || Span::styled(" │ ", dim());
    let mut spans = vec![
        Span::styled(" gaffer ", Style::new().fg(Color::Black).bg(Color::Cyan).add_modifier(Modifier::BOLD)),
        Span::styled(format!(" {}", model.title), bold()),
        sep(),
        Span::styled("workers ", dim()),
        Span::styled(format!("{}/{}", model.workers_busy(), model.workers.len()), bold()),
        Span::styled(" busy", dim()),
    ];
    if let Some(labels) = model.node_labels.as_ref().filter(|l| !l.is_empty()) {
        spans.push(Span::styled(format!(" · labels {}", labels.join(",")), dim()));
    }
    spans.extend([sep(), Span::styled("cost ", dim()), Span::styled(usd(model.cost.total), bold().fg(Color::Yellow))]);
    if model.session == Session::ReadOnly {
        spans.push(sep());
        spans.push(Span::styled(crate::engine::READ_ONLY, bold().fg(Color::Yellow)));
    }
    let starved = model.waiting_for_resources();
    if starved > 0 {
        spans.push(sep());
        let text = format!("⚠ {starved} waiting for resources (too many open files or processes)");
        spans.push(Span::styled(text, bold().fg(Color::Yellow)));
    }
    if model.all_watched_ended() {
        spans.push(sep());
        spans.push(Span::styled("all runs ended — q to quit", bold().fg(Color::Green)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), top);

    let mut spans = Vec::new();
    for state in ORDER {
        let n = model.count(state);
        if n == 0 && !matches!(state, TaskState::Running | TaskState::Queued) {
            continue;
        }
        spans.push(Span::styled(format!(" {n}"), Style::new().fg(task_color(state)).add_modifier(Modifier::BOLD)));
        spans.push(Span::styled(format!(" {}", state.as_str()), dim()));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), counts);

    let label = |i: usize, view: View, short: bool| {
        let badge = match view {
            View::Retries if !model.retrying.is_empty() => format!(" {}", model.retrying.len()),
            View::DeadLetters if !model.dead.is_empty() => format!(" {}", model.dead.len()),
            _ => String::new(),
        };
        let title = if short && view != model.focus { view.short_title() } else { view.title() };
        format!(" {} {title}{badge} ", i + 1)
    };
    // On a narrow terminal the tabs not shown take their short titles, so all eight fit.
    let full: usize = View::ALL.into_iter().enumerate().map(|(i, v)| label(i, v, false).chars().count()).sum();
    let short = full > usize::from(tabs.width);
    let mut tab_spans = Vec::new();
    for (i, view) in View::ALL.into_iter().enumerate() {
        let text = label(i, view, short);
        let badge = matches!(view, View::Retries | View::DeadLetters) && text.trim_end().ends_with(char::is_numeric);
        let style = if view == model.focus {
            Style::new().fg(Color::Black).bg(Color::Gray).add_modifier(Modifier::BOLD)
        } else if view == View::DeadLetters && badge {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        tab_spans.push(Span::styled(text, style));
    }
    frame.render_widget(Paragraph::new(Line::from(tab_spans)), tabs);
}
