//! `?`: every key, generated from the key table.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};

use super::{bold, dim};
use crate::tui::keymap;

pub fn draw(frame: &mut Frame, body: Rect) {
    let lines = keymap::help_lines();
    let area = body;
    frame.render_widget(Clear, area);
    let block =
        Block::new().borders(Borders::ALL).border_style(dim()).title(Line::styled(" Keys (Esc closes) ", bold()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let columns = lines.len().div_ceil(usize::from(inner.height).max(1)).max(1);
    let rows = lines.len().div_ceil(columns).max(1);
    let areas = Layout::horizontal(vec![Constraint::Ratio(1, columns as u32); columns]).split(inner);
    for (chunk, column) in lines.chunks(rows).zip(areas.iter()) {
        let text: Vec<Line> = chunk
            .iter()
            .map(|(keys, help)| {
                Line::from(vec![Span::styled(format!(" {keys:<12}"), bold().fg(Color::Cyan)), Span::raw(help.clone())])
            })
            .collect();
        frame.render_widget(Paragraph::new(text), *column);
    }
}
