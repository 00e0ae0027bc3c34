//! The XML-RPC decoder on any bytes: it never panics, and whatever call it
//! accepts encodes back to a call it decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockd::xmlrpc::{encode_call, encode_response, parse_call, parse_response};

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = parse_call(data) {
        let again = encode_call(&call.name, &call.params);
        let back = parse_call(again.as_bytes()).expect("an encoded call decodes");
        // Debug, not ==, so that a NaN equals itself.
        assert_eq!(format!("{back:?}"), format!("{call:?}"));
        for value in &call.params {
            let response = encode_response(value);
            let back = parse_response(response.as_bytes()).expect("an encoded response decodes");
            assert_eq!(format!("{back:?}"), format!("{:?}", Ok::<_, ()>(value)));
        }
    }
    let _ = parse_response(data);
});
