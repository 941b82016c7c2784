//! The key table (SPEC §4.2) as data. `update` looks keys up here; the footer and the `?` help
//! are generated from it, so they cannot drift from what the keys do.

use crate::model::TaskState;

use super::model::View;

/// A key, independent of the terminal library (`tui::terminal` converts crossterm's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub code: Code,
    pub ctrl: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Char(char),
    Enter,
    Esc,
    Tab,
    BackTab,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
}

impl Key {
    pub const fn ch(c: char) -> Key {
        Key { code: Code::Char(c), ctrl: false }
    }

    pub const fn code(code: Code) -> Key {
        Key { code, ctrl: false }
    }

    pub const fn ctrl(c: char) -> Key {
        Key { code: Code::Char(c), ctrl: true }
    }

    /// How the help and the footer name the key.
    pub fn label(self) -> String {
        let base = match self.code {
            Code::Char(' ') => "Space".to_string(),
            Code::Char(c) => c.to_string(),
            Code::Enter => "Enter".into(),
            Code::Esc => "Esc".into(),
            Code::Tab => "Tab".into(),
            Code::BackTab => "Shift-Tab".into(),
            Code::Backspace => "Backspace".into(),
            Code::Up => "↑".into(),
            Code::Down => "↓".into(),
            Code::PageUp => "PgUp".into(),
            Code::PageDown => "PgDn".into(),
            Code::Home => "Home".into(),
            Code::End => "End".into(),
        };
        if self.ctrl { format!("Ctrl-{base}") } else { base }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    GoTo(View),
    NextView,
    PrevView,
    Down,
    Up,
    PageDown,
    PageUp,
    Top,
    Bottom,
    Details,
    Back,
    Filter,
    Sort,
    Reverse,
    Help,
    Retry,
    RetryFrom,
    Cancel,
    Pause,
    Approve,
    Log,
    Quit,
}

impl Action {
    /// Whether the action asks the engine to change something (refused while read-only).
    pub fn changes_state(self) -> bool {
        matches!(self, Action::Retry | Action::RetryFrom | Action::Cancel | Action::Pause | Action::Approve)
    }
}

/// A set of views, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewSet(u8);

impl ViewSet {
    pub const ALL: ViewSet = ViewSet(0xff);

    pub const fn of(views: &[View]) -> ViewSet {
        let mut bits = 0u8;
        let mut i = 0;
        while i < views.len() {
            bits |= 1 << views[i] as u8;
            i += 1;
        }
        ViewSet(bits)
    }

    pub fn contains(self, view: View) -> bool {
        self.0 & (1 << view as u8) != 0
    }
}

pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub views: ViewSet,
    /// The line in `?` help.
    pub help: &'static str,
    /// The word in the footer; empty keeps it out of the footer.
    pub short: &'static str,
    /// When the footer shows it.
    pub shown: Shown,
}

/// When a binding is worth a place in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Always,
    /// Only while the selected row is a task run in this state: the key does nothing for any
    /// other, and waiting task runs are rare enough that the word would mostly be noise.
    Selected(TaskState),
}

impl Shown {
    fn holds(self, selected: Option<TaskState>) -> bool {
        match self {
            Shown::Always => true,
            Shown::Selected(state) => selected == Some(state),
        }
    }
}

/// Where a task run is selected in a list.
const TASK_LISTS: ViewSet = ViewSet::of(&[View::Tasks, View::Retries, View::DeadLetters]);
const TASK_VIEWS: ViewSet = ViewSet::of(&[View::Jobs, View::Tasks, View::Retries, View::DeadLetters, View::Workers]);
const LISTS: ViewSet = ViewSet::of(&[View::Jobs, View::Tasks, View::Retries, View::DeadLetters]);
const LOGGABLE: ViewSet = ViewSet::of(&[View::Tasks, View::Retries, View::DeadLetters, View::Workers]);
const TABLES: ViewSet =
    ViewSet::of(&[View::Queues, View::Jobs, View::Tasks, View::Retries, View::DeadLetters, View::Workers]);

macro_rules! bind {
    ($keys:expr, $action:expr, $views:expr, $help:expr, $short:expr) => {
        bind!($keys, $action, $views, $help, $short, Shown::Always)
    };
    ($keys:expr, $action:expr, $views:expr, $help:expr, $short:expr, $shown:expr) => {
        Binding { keys: $keys, action: $action, views: $views, help: $help, short: $short, shown: $shown }
    };
}

/// Every key of the TUI outside of typing a filter or answering a question.
pub const BINDINGS: &[Binding] = &[
    bind!(&[Key::ch('1')], Action::GoTo(View::Queues), ViewSet::ALL, "Queues", ""),
    bind!(&[Key::ch('2')], Action::GoTo(View::Jobs), ViewSet::ALL, "Jobs", ""),
    bind!(&[Key::ch('3')], Action::GoTo(View::Tasks), ViewSet::ALL, "Tasks", ""),
    bind!(&[Key::ch('4')], Action::GoTo(View::Retries), ViewSet::ALL, "Retries", ""),
    bind!(&[Key::ch('5')], Action::GoTo(View::DeadLetters), ViewSet::ALL, "Dead letters", ""),
    bind!(&[Key::ch('6')], Action::GoTo(View::Cost), ViewSet::ALL, "Cost", ""),
    bind!(&[Key::ch('7')], Action::GoTo(View::Workers), ViewSet::ALL, "Workers", ""),
    bind!(&[Key::ch('8')], Action::GoTo(View::Schedules), ViewSet::ALL, "Schedules", ""),
    bind!(&[Key::code(Code::Tab)], Action::NextView, ViewSet::ALL, "next view", ""),
    bind!(&[Key::code(Code::BackTab)], Action::PrevView, ViewSet::ALL, "previous view", ""),
    bind!(&[Key::ch('j'), Key::code(Code::Down)], Action::Down, ViewSet::ALL, "move down", ""),
    bind!(&[Key::ch('k'), Key::code(Code::Up)], Action::Up, ViewSet::ALL, "move up", ""),
    bind!(&[Key::code(Code::PageDown), Key::ctrl('d')], Action::PageDown, ViewSet::ALL, "page down", ""),
    bind!(&[Key::code(Code::PageUp), Key::ctrl('u')], Action::PageUp, ViewSet::ALL, "page up", ""),
    bind!(&[Key::ch('g'), Key::code(Code::Home)], Action::Top, ViewSet::ALL, "top", ""),
    bind!(&[Key::ch('G'), Key::code(Code::End)], Action::Bottom, ViewSet::ALL, "bottom", ""),
    bind!(
        &[Key::code(Code::Enter)],
        Action::Details,
        TABLES,
        "details; in a job run's graph: expand/fold a task's runs",
        "details"
    ),
    bind!(&[Key::code(Code::Esc)], Action::Back, ViewSet::ALL, "back / clear the filter / fold a task's runs", ""),
    bind!(&[Key::ch('/')], Action::Filter, LISTS, "filter: text or a state", "filter"),
    bind!(&[Key::ch('s')], Action::Sort, LISTS, "sort by the next column", "sort"),
    bind!(&[Key::ch('S')], Action::Reverse, LISTS, "reverse the sort", ""),
    bind!(
        &[Key::ch('r')],
        Action::Retry,
        TASK_VIEWS,
        "retry a task run / a job run's dead and cancelled runs",
        "retry"
    ),
    bind!(&[Key::ch('R')], Action::RetryFrom, TASK_LISTS, "re-run the finished job run from this task", ""),
    bind!(&[Key::ch('c')], Action::Cancel, TASK_VIEWS, "cancel (asks if running)", "cancel"),
    bind!(&[Key::ch('p')], Action::Pause, ViewSet::of(&[View::Queues]), "pause / resume the queue", "pause"),
    bind!(
        &[Key::ch('a')],
        Action::Approve,
        TASK_VIEWS,
        "approve a waiting task",
        "approve",
        Shown::Selected(TaskState::Waiting)
    ),
    bind!(&[Key::ch('l')], Action::Log, LOGGABLE, "follow the task's log", "log"),
    bind!(&[Key::ch('?')], Action::Help, ViewSet::ALL, "this help", "help"),
    bind!(&[Key::ch('q'), Key::ctrl('c')], Action::Quit, ViewSet::ALL, "quit (asks if work runs)", "quit"),
];

/// The action `key` has in `view`, if any.
pub fn lookup(key: Key, view: View) -> Option<Action> {
    BINDINGS.iter().find(|b| b.views.contains(view) && b.keys.contains(&key)).map(|b| b.action)
}

/// `(keys, words)` for the footer of `view`, where the selected task run (if any) is in
/// `selected` state.
pub fn footer(view: View, selected: Option<TaskState>) -> Vec<(String, &'static str)> {
    BINDINGS
        .iter()
        .filter(|b| !b.short.is_empty() && b.views.contains(view) && b.shown.holds(selected))
        .map(|b| (b.keys[0].label(), b.short))
        .collect()
}

/// The keys of the views as one label: `1-8`.
pub fn view_keys() -> String {
    let views: Vec<&Binding> = BINDINGS.iter().filter(|b| matches!(b.action, Action::GoTo(_))).collect();
    match (views.first(), views.last()) {
        (Some(first), Some(last)) => format!("{}-{}", first.keys[0].label(), last.keys[0].label()),
        _ => String::new(),
    }
}

/// `(keys, help)` for every binding, in table order; the view keys (`1`..`8`) share a line.
pub fn help_lines() -> Vec<(String, String)> {
    let mut lines = vec![(view_keys(), "switch view (see the tabs)".to_string())];
    for b in BINDINGS.iter().filter(|b| !matches!(b.action, Action::GoTo(_))) {
        lines.push((b.keys.iter().map(|k| k.label()).collect::<Vec<_>>().join(" "), b.help.to_string()));
    }
    lines
}
