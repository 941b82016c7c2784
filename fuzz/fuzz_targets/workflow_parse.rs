//! The workflow parser on arbitrary text: it never panics, and every diagnostic points inside
//! the file (a line that exists, a column within it or just past its end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(diagnostics) = gaffer::config::parse(Path::new("/fuzz/workflow.toml"), text) {
        let lines: Vec<&str> = text.split('\n').collect();
        for d in &diagnostics.items {
            assert!(d.line >= 1 && d.line <= lines.len().max(1), "line {} outside the file: {}", d.line, d.message);
            let width = lines.get(d.line - 1).map_or(0, |l| l.chars().count());
            assert!(d.col >= 1 && d.col <= width + 1, "col {} outside line {}: {}", d.col, d.line, d.message);
        }
    }
});
