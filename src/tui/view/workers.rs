//! Workers: each worker slot, its current attempt, heartbeat age and restarts; in a cluster,
//! the nodes above them, each with its heartbeat age and whether its lease is live.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row};

use super::{TableSpec, age, bold, dim, draw_table, dur};
use crate::engine::NodeStatus;
use crate::tui::model::{Model, View};

const HEADER: &[&str] = &["worker", "state", "task run", "attempt", "pid", "running", "heartbeat", "restarts"];
const WIDTHS: &[Constraint] = &[
    Constraint::Length(6),
    Constraint::Length(5),
    Constraint::Min(20),
    Constraint::Length(7),
    Constraint::Length(8),
    Constraint::Length(8),
    Constraint::Length(9),
    Constraint::Length(8),
];

/// The most nodes listed above the workers (the rest are counted).
const NODES_SHOWN: usize = 8;

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    let area = if model.nodes.is_empty() {
        area
    } else {
        let shown = model.nodes.len().min(NODES_SHOWN) + usize::from(model.nodes.len() > NODES_SHOWN);
        let [nodes, rest] = Layout::vertical([Constraint::Length(shown as u16 + 2), Constraint::Min(3)]).areas(area);
        let block = Block::new().borders(Borders::ALL).border_style(dim()).title(Span::styled(" Nodes ", bold()));
        frame.render_widget(Paragraph::new(node_lines(&model.nodes)).block(block), nodes);
        rest
    };
    draw_workers(model, frame, area);
}

/// One line per node (live first, then by name as read): name, live or dead, heartbeat age,
/// labels.
fn node_lines(nodes: &[NodeStatus]) -> Vec<Line<'static>> {
    let mut sorted: Vec<&NodeStatus> = nodes.iter().collect();
    sorted.sort_by_key(|n| !n.live);
    let mut lines: Vec<Line> = sorted
        .iter()
        .take(NODES_SHOWN)
        .map(|n| {
            let (mark, state, color) = if n.live { ("●", "live", Color::Green) } else { ("✗", "dead", Color::Red) };
            let labels = if n.labels.is_empty() { String::new() } else { format!("  [{}]", n.labels.join(", ")) };
            Line::from(vec![
                Span::styled(format!("{mark} "), Style::new().fg(color)),
                Span::styled(format!("{:<24}", n.name), bold()),
                Span::styled(format!("{state:<5}"), Style::new().fg(color)),
                Span::raw(format!("  heartbeat {} ago", age(n.heartbeat_age_ms))),
                Span::styled(labels, dim()),
            ])
        })
        .collect();
    if nodes.len() > NODES_SHOWN {
        lines.push(Line::styled(format!("… and {} more", nodes.len() - NODES_SHOWN), dim()));
    }
    lines
}

fn draw_workers(model: &Model, frame: &mut Frame, area: Rect) {
    draw_table(model, frame, area, TableSpec { view: View::Workers, header: HEADER, widths: WIDTHS }, |id| {
        let w = model.workers.iter().find(|w| w.snap.id as u64 == id)?;
        let restarts = Span::styled(
            w.snap.restarts.to_string(),
            if w.snap.restarts > 0 { Style::new().fg(Color::Yellow) } else { dim() },
        );
        let Some(c) = w.snap.current else {
            return Some(Row::new(vec![
                Cell::from(format!("w{}", w.snap.id)),
                Cell::from(Span::styled("idle", dim())),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(restarts),
            ]));
        };
        let task = model.tasks.get(&c.task_run).map_or(String::new(), |t| format!(" {}.{}", t.rec.job, t.rec.label()));
        let silent = model.now_ms.saturating_sub(c.last_activity_ms);
        let heartbeat_style = if silent > 60_000 { Style::new().fg(Color::Red) } else { Style::new() };
        Some(Row::new(vec![
            Cell::from(format!("w{}", w.snap.id)),
            Cell::from(Span::styled("busy", Style::new().fg(Color::Cyan))),
            Cell::from(format!("#{}{task}", c.task_run)),
            Cell::from(c.attempt.to_string()),
            Cell::from(c.pid.map(|p| p.to_string()).unwrap_or_default()),
            Cell::from(dur(model.now_ms.saturating_sub(c.started_ms))),
            Cell::from(Span::styled(format!("{} ago", age(silent)), heartbeat_style)),
            Cell::from(restarts),
        ]))
    });
}

#[cfg(test)]
mod tests {
    use crate::engine::NodeStatus;
    use crate::tui::update::{Msg, update};

    fn node(name: &str, labels: &[&str], heartbeat_age_ms: u64, live: bool) -> NodeStatus {
        NodeStatus { name: name.into(), labels: labels.iter().map(|l| l.to_string()).collect(), heartbeat_age_ms, live }
    }

    #[test]
    fn the_workers_view_lists_the_nodes_with_heartbeat_age_above_the_workers() {
        let mut model = crate::tui::fixture::fixture();
        update(&mut model, Msg::Key(crate::tui::keymap::Key::ch('7')));
        let alone = crate::tui::render_to_string(&model, 120, 30);
        assert!(!alone.contains("Nodes"), "no cluster, no nodes:\n{alone}");
        let nodes = vec![node("b-node", &[], 45_000, false), node("a-node", &["gpu", "eu"], 2_000, true)];
        update(&mut model, Msg::Nodes(nodes));
        model.prepare();
        let screen = crate::tui::render_to_string(&model, 120, 30);
        let lines: Vec<&str> = screen.lines().collect();
        let at = |needle: &str| {
            lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}:\n{screen}"))
        };
        let (a, b, workers) = (at("a-node"), at("b-node"), at("Workers ("));
        assert!(a < b && b < workers, "live nodes first, then the workers:\n{screen}");
        let words = |i: usize| lines[i].split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
        assert!(words(a).contains("● a-node live heartbeat 2s ago [gpu, eu]"), "{}", words(a));
        assert!(words(b).contains("✗ b-node dead heartbeat 45s ago"), "{}", words(b));
    }
}
