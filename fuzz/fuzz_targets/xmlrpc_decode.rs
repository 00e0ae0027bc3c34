//! The XML-RPC decoder on any bytes: it never panics, and whatever call it
//! accepts encodes back to a call it decodes to the same thing; its values
//! encode to responses that decode to them too, but for the characters XML
//! 1.0 cannot carry, which answers carry as U+FFFD.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockd::xmlrpc::{Value, encode_call, encode_response, parse_call, parse_response};

/// Whether XML 1.0 can carry every character of `value`.
fn xml_carries(value: &Value) -> bool {
    let text = |s: &str| {
        s.chars().all(|c| {
            !matches!(c, '\0'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
        })
    };
    match value {
        Value::String(s) => text(s),
        Value::Struct(members) => members.iter().all(|(n, v)| text(n) && xml_carries(v)),
        Value::Array(items) => items.iter().all(xml_carries),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = parse_call(data) {
        let again = encode_call(&call.name, &call.params);
        let back = parse_call(again.as_bytes()).expect("an encoded call decodes");
        // Debug, not ==, so that a NaN equals itself.
        assert_eq!(format!("{back:?}"), format!("{call:?}"));
        for value in &call.params {
            let response = encode_response(value);
            let back = parse_response(response.as_bytes()).expect("an encoded response decodes");
            if xml_carries(value) {
                assert_eq!(format!("{back:?}"), format!("{:?}", Ok::<_, ()>(value)));
            }
        }
    }
    let _ = parse_response(data);
});
