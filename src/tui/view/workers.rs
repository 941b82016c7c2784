//! Workers: each worker slot, its current attempt, heartbeat age and restarts; in a cluster,
//! the nodes above them, each with its heartbeat age, whether its lease is live, and the
//! attempts running on it (every node's, not only this one's).

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
/// The most attempts listed under one node (the rest are counted).
const ATTEMPTS_SHOWN: usize = 4;

pub fn draw(model: &Model, frame: &mut Frame, area: Rect) {
    let area = if model.nodes.is_empty() {
        area
    } else {
        let lines = node_lines(&model.nodes);
        // The workers table keeps room for its header and a few rows.
        let height = (lines.len() as u16 + 2).min(area.height.saturating_sub(5).max(3));
        let [nodes, rest] = Layout::vertical([Constraint::Length(height), Constraint::Min(3)]).areas(area);
        let block = Block::new().borders(Borders::ALL).border_style(dim()).title(Span::styled(" Nodes ", bold()));
        frame.render_widget(Paragraph::new(lines).block(block), nodes);
        rest
    };
    draw_workers(model, frame, area);
}

/// Each node (live first, then by name as read): name, live or dead, heartbeat age, labels,
/// how many attempts run on it; then those attempts, one line each.
fn node_lines(nodes: &[NodeStatus]) -> Vec<Line<'static>> {
    let mut sorted: Vec<&NodeStatus> = nodes.iter().collect();
    sorted.sort_by_key(|n| !n.live);
    let mut lines: Vec<Line> = Vec::new();
    for n in sorted.iter().take(NODES_SHOWN) {
        let (mark, state, color) = if n.live { ("●", "live", Color::Green) } else { ("✗", "dead", Color::Red) };
        let labels = if n.labels.is_empty() { String::new() } else { format!("  [{}]", n.labels.join(", ")) };
        lines.push(Line::from(vec![
            Span::styled(format!("{mark} "), Style::new().fg(color)),
            Span::styled(format!("{:<24}", n.name), bold()),
            Span::styled(format!("{state:<5}"), Style::new().fg(color)),
            Span::raw(format!("  heartbeat {} ago", age(n.heartbeat_age_ms))),
            Span::raw(format!("  {} running", n.running.len())),
            Span::styled(labels, dim()),
        ]));
        for a in n.running.iter().take(ATTEMPTS_SHOWN) {
            let line = format!("    #{} {} attempt {} (j{})", a.task_run, a.task, a.attempt, a.job_run);
            lines.push(Line::styled(line, Style::new().fg(Color::Cyan)));
        }
        if n.running.len() > ATTEMPTS_SHOWN {
            lines.push(Line::styled(format!("    … and {} more", n.running.len() - ATTEMPTS_SHOWN), dim()));
        }
    }
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
        let labels = labels.iter().map(|l| l.to_string()).collect();
        NodeStatus { name: name.into(), labels, heartbeat_age_ms, live, running: Vec::new() }
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
        assert!(words(a).contains("● a-node live heartbeat 2s ago 0 running [gpu, eu]"), "{}", words(a));
        assert!(words(b).contains("✗ b-node dead heartbeat 45s ago"), "{}", words(b));
    }

    #[test]
    fn the_workers_view_groups_every_nodes_running_attempts_under_it() {
        let mut model = crate::tui::fixture::fixture();
        update(&mut model, Msg::Key(crate::tui::keymap::Key::ch('7')));
        let on = |task_run: u64, task: &str| crate::store::RunningOnNode {
            task_run,
            attempt: 2,
            job_run: 9,
            task: task.into(),
        };
        let mut here = node("a-node", &[], 1_000, true);
        here.running = vec![on(11, "fetch")];
        let mut there = node("b-node", &[], 2_000, true);
        there.running = (20..26).map(|id| on(id, "train")).collect();
        update(&mut model, Msg::Nodes(vec![there, here]));
        model.prepare();
        let screen = crate::tui::render_to_string(&model, 120, 40);
        let lines: Vec<&str> = screen.lines().collect();
        let at = |needle: &str| {
            lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}:\n{screen}"))
        };
        let words = |i: usize| lines[i].split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
        let (a, b) = (at("a-node"), at("b-node"));
        assert!(words(a).contains("a-node live heartbeat 1s ago 1 running"), "{}", words(a));
        assert!(words(b).contains("b-node live heartbeat 2s ago 6 running"), "{}", words(b));
        assert!(words(a + 1).contains("#11 fetch attempt 2 (j9)"), "a's attempt under a:\n{screen}");
        for (k, id) in (20..24).enumerate() {
            assert!(words(b + 1 + k).contains(&format!("#{id} train attempt 2 (j9)")), "b's under b:\n{screen}");
        }
        assert!(words(b + 5).contains("… and 2 more"), "{screen}");
        assert!(at("Workers (") > b + 5, "then this node's workers:\n{screen}");
    }
}
