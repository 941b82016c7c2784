//! The fd-3 control protocol on arbitrary bytes, line by line as a task would write them:
//! never panics, whatever the task sends (malformed lines only become warnings).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parser = gaffer::executor::protocol::Parser::new();
    for line in data.split_inclusive(|b| *b == b'\n') {
        let _ = parser.line(line);
    }
    let _ = parser.finish();
});
