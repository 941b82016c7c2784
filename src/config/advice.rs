//! Warnings about a valid workflow file that will probably not do what its author wants. They
//! never fail `validate` (exit 0); `validate`, `run` and `serve` print them.

use super::{CommandSpec, CostSource, Workflow};

/// Every warning about `workflow`, one sentence each, naming the job and task.
pub fn warnings(workflow: &Workflow) -> Vec<String> {
    let mut out = Vec::new();
    for job in &workflow.jobs {
        for task in &job.tasks {
            if task.cost != CostSource::Protocol
                && task.heartbeat_timeout < task.timeout
                && output_format(&task.command) == Some(OutputFormat::AtTheEnd)
            {
                out.push(format!(
                    "job `{}` task `{}`: its agent prints nothing until it ends (a non-streaming \
                     `--output-format`), so the watchdog kills it after heartbeat_timeout = {} of silence, \
                     before its timeout = {}; stream instead (`claude -p --output-format stream-json --verbose`, \
                     `gemini --output-format stream-json`), have it print progress on stderr, or raise heartbeat_timeout",
                    job.name,
                    task.name,
                    humantime::format_duration(task.heartbeat_timeout),
                    humantime::format_duration(task.timeout),
                ));
            }
        }
    }
    out
}

/// What an agent command's `--output-format` says about when it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `stream-json`: a line per event, as it goes.
    Streaming,
    /// `json`, `text`: one answer when the run ends.
    AtTheEnd,
}

/// The `--output-format` of a command (`run` text split on blanks, or `args`), if it has one.
/// Only what is written in the command counts: a wrapper script is not looked into.
pub fn output_format(command: &CommandSpec) -> Option<OutputFormat> {
    let words: Vec<&str> = match command {
        CommandSpec::Shell(text) => text.split_whitespace().collect(),
        CommandSpec::Argv(argv) => argv.iter().map(String::as_str).collect(),
    };
    let mut found = None;
    for (i, word) in words.iter().enumerate() {
        let value = match word.split_once('=') {
            Some(("--output-format", value)) => Some(value),
            None if *word == "--output-format" => words.get(i + 1).copied(),
            _ => None,
        };
        if let Some(value) = value {
            let value = value.trim_matches(['"', '\'']);
            found = Some(if value.contains("stream") { OutputFormat::Streaming } else { OutputFormat::AtTheEnd });
        }
    }
    // Without the flag, `claude -p` and `gemini -p` print plain text once, at the end.
    found.or_else(|| words.iter().any(|w| is_print_mode_agent(w)).then_some(OutputFormat::AtTheEnd))
}

/// An agent CLI whose default output (no `--output-format`) is one answer at the end.
fn is_print_mode_agent(word: &str) -> bool {
    let program = word.rsplit('/').next().unwrap_or(word);
    matches!(program, "claude" | "gemini")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_output_format_is_read_from_the_command() {
        let shell = |s: &str| output_format(&CommandSpec::Shell(s.to_string()));
        let cases: &[(&str, Option<OutputFormat>)] = &[
            ("claude -p \"$PROMPT\" --output-format json", Some(OutputFormat::AtTheEnd)),
            ("claude -p --output-format=json", Some(OutputFormat::AtTheEnd)),
            ("claude -p --output-format 'text'", Some(OutputFormat::AtTheEnd)),
            ("claude -p --output-format stream-json --verbose", Some(OutputFormat::Streaming)),
            ("gemini -p hi --output-format=stream-json", Some(OutputFormat::Streaming)),
            ("claude -p \"$PROMPT\"", Some(OutputFormat::AtTheEnd)),
            ("/usr/local/bin/gemini -p hi", Some(OutputFormat::AtTheEnd)),
            ("./scripts/review.sh", None),
            ("codex exec --json 'fix it'", None),
        ];
        for (command, want) in cases {
            assert_eq!(shell(command), *want, "{command}");
        }
        let argv = CommandSpec::Argv(vec!["claude".into(), "--output-format".into(), "json".into()]);
        assert_eq!(output_format(&argv), Some(OutputFormat::AtTheEnd));
    }

    fn warned(task: &str) -> Vec<String> {
        let text = format!("[jobs.j.tasks.t]\n{task}\n");
        let workflow = crate::config::parse(Path::new("wf.toml"), &text).expect("valid");
        warnings(&workflow)
    }

    #[test]
    fn a_silent_agent_under_a_shorter_heartbeat_is_warned_about() {
        let silent = "run = 'claude -p hi --output-format json'\ncost = 'claude-json'";
        let w = warned(silent);
        assert_eq!(w.len(), 1, "defaults: heartbeat 10m < timeout 1h");
        assert!(w[0].starts_with("job `j` task `t`: "), "{}", w[0]);
        assert!(w[0].contains("heartbeat_timeout = 10m") && w[0].contains("timeout = 1h"), "{}", w[0]);
        for fine in [
            "run = 'claude -p hi --output-format stream-json --verbose'\ncost = 'claude-json'",
            "run = 'claude -p hi --output-format json'\ncost = 'protocol'",
            "run = 'claude -p hi --output-format json'\ncost = 'claude-json'\nheartbeat_timeout = '1h'",
            "run = './agent.sh'\ncost = 'claude-json'",
        ] {
            assert!(warned(fine).is_empty(), "{fine}");
        }
    }
}
