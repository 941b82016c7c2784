//! The control API's request decoding on arbitrary requests: the route (method and request
//! target), path parameters, query string, content type and JSON body, decoded by the same
//! `gaffer::api::decode_request` the server answers from: never panics, and every refusal is
//! a 4xx with a reason (a 405 naming the method the endpoint takes).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The input is `METHOD TARGET\nCONTENT-TYPE\nBODY` (a missing line is an empty field; an
/// empty content type is none at all), so a corpus entry reads like the request it stands for.
fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let request_line = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let content_type = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let (method, target) = request_line.split_once(' ').unwrap_or((&request_line, ""));
    let content_type = Some(content_type.as_ref()).filter(|c| !c.is_empty());
    if let Err(e) = gaffer::api::decode_request(method, target, content_type, body) {
        assert!(matches!(e.status, 400 | 404 | 405), "status {} for {method} {target}: {}", e.status, e.message);
        assert!(!e.message.is_empty(), "a refusal without a reason for {method} {target}");
        assert_eq!(e.status == 405, e.allow.is_some(), "Allow on {} for {method} {target}", e.status);
    }
});
