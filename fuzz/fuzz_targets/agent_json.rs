//! The agent-result parser (cost, tokens, outputs) on arbitrary stdout, cut into chunks at
//! arbitrary places (as pipes deliver it), for every agent cost source: never panics.
#![no_main]

use gaffer::config::CostSource;
use gaffer::executor::agent_json::AgentJson;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stdout)) = data.split_first() else { return };
    let chunk = usize::from(cut % 64) + 1;
    for source in [CostSource::ClaudeJson, CostSource::OpenAiJson] {
        let Some(mut parser) = AgentJson::new(source) else { continue };
        for line in stdout.split_inclusive(|b| *b == b'\n') {
            for piece in line.chunks(chunk) {
                parser.push(piece);
            }
        }
        let _ = parser.finish();
    }
});
