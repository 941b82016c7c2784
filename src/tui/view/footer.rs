//! The bottom two lines: a status / prompt line, and the keys of the focused view (from the
//! key table).

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::{bold, dim};
use crate::tui::keymap;
use crate::tui::model::{Mode, Model, Subject};

pub fn draw(model: &Model, frame: &mut Frame, status: Rect, keys: Rect) {
    let line = match &model.mode {
        Mode::Filter(text) => Line::from(vec![
            Span::styled("/", bold().fg(Color::Yellow)),
            Span::raw(text.clone()),
            Span::styled("▏", Style::new().fg(Color::Yellow)),
            // The keys line below says what Enter and Esc do.
            Span::styled("  type a word or a state", dim()),
        ]),
        Mode::Confirm { question, .. } => Line::styled(format!(" {question}"), bold().fg(Color::Yellow)),
        _ => match &model.status {
            Some(s) if s.error => Line::styled(format!(" {}", s.text), Style::new().fg(Color::Red)),
            Some(s) => Line::styled(format!(" {}", s.text), Style::new().fg(Color::Green)),
            None => Line::raw(""),
        },
    };
    frame.render_widget(Paragraph::new(line), status);
    frame.render_widget(Paragraph::new(Line::from(key_spans(model))), keys);
}

fn key_spans(model: &Model) -> Vec<Span<'static>> {
    // The task run the keys act on: also the one a detail pane shows, opened from that row.
    let selected = model.selected_task().map(|t| t.rec.state);
    let pairs: Vec<(String, &str)> = match &model.mode {
        Mode::Help => vec![("Esc".into(), "close")],
        Mode::Confirm { .. } => vec![("y".into(), "yes"), ("n".into(), "no")],
        Mode::Filter(_) => vec![("Enter".into(), "keep"), ("Esc".into(), "clear")],
        Mode::Log(_) => {
            vec![("Esc".into(), "back"), ("j/k".into(), "scroll"), ("G".into(), "follow"), ("[ ]".into(), "attempts")]
        }
        Mode::Detail(subject) => {
            let mut keys = match subject {
                // A job run's detail moves a cursor over its task graph.
                Subject::Job(_) => {
                    vec![("Esc".to_string(), "back"), ("j/k".to_string(), "move"), ("Enter".to_string(), "expand")]
                }
                _ => vec![("Esc".to_string(), "back"), ("j/k".to_string(), "scroll")],
            };
            keys.extend(
                keymap::footer(model.focus, selected)
                    .into_iter()
                    .filter(|(_, w)| !matches!(*w, "details" | "filter" | "sort")),
            );
            keys
        }
        Mode::Normal => {
            let mut keys = vec![(keymap::view_keys(), "views"), ("j/k".to_string(), "move")];
            keys.extend(keymap::footer(model.focus, selected));
            keys
        }
    };
    let mut spans = Vec::new();
    for (key, word) in pairs {
        spans.push(Span::styled(format!(" {key}"), bold().fg(Color::Cyan)));
        spans.push(Span::styled(format!(" {word} "), dim()));
    }
    spans
}
