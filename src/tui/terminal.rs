//! The only file that touches crossterm: raw mode and the alternate screen in, and out again on
//! every exit path (drop, error, panic); keys as [`Key`]s.

use std::io::{self, Stdout};

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use super::keymap::{Code, Key};

pub type Backend = CrosstermBackend<Stdout>;

/// Owns the terminal while the TUI runs; restores it when dropped.
pub struct Screen {
    pub terminal: Terminal<Backend>,
}

impl Screen {
    /// Raw mode, alternate screen, hidden cursor; a panic hook that restores them first.
    pub fn enter() -> io::Result<Screen> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        let entered = execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .and_then(|_| Terminal::new(CrosstermBackend::new(io::stdout())));
        match entered {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen. Safe to call more than once.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// What the terminal says: a key, a new size, or that it has no more to say.
pub enum Input {
    Key(Key),
    Resize(u16, u16),
    Closed,
}

/// Terminal input as an async stream.
pub struct Keys {
    stream: EventStream,
}

impl Keys {
    pub fn new() -> Keys {
        Keys { stream: EventStream::new() }
    }

    /// The next key or resize; other events (mouse, focus, key releases) are skipped.
    pub async fn next(&mut self) -> Input {
        loop {
            match self.stream.next().await {
                None | Some(Err(_)) => return Input::Closed,
                Some(Ok(Event::Resize(w, h))) => return Input::Resize(w, h),
                Some(Ok(Event::Key(key))) => {
                    if let Some(key) = convert(key) {
                        return Input::Key(key);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::new()
    }
}

pub fn size() -> io::Result<(u16, u16)> {
    terminal::size()
}

fn convert(key: KeyEvent) -> Option<Key> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let code = match key.code {
        KeyCode::Char(c) => Code::Char(c),
        KeyCode::Enter => Code::Enter,
        KeyCode::Esc => Code::Esc,
        KeyCode::Tab if key.modifiers.contains(KeyModifiers::SHIFT) => Code::BackTab,
        KeyCode::Tab => Code::Tab,
        KeyCode::BackTab => Code::BackTab,
        KeyCode::Backspace => Code::Backspace,
        KeyCode::Up => Code::Up,
        KeyCode::Down => Code::Down,
        KeyCode::PageUp => Code::PageUp,
        KeyCode::PageDown => Code::PageDown,
        KeyCode::Home => Code::Home,
        KeyCode::End => Code::End,
        _ => return None,
    };
    Some(Key { code, ctrl })
}
