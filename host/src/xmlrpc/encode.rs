//! [`Value`]s, responses, faults and calls to bytes, laid out as Python's
//! `xmlrpc` module lays them out.

use super::{Fault, Value};
use base64::Engine as _;
use std::fmt::Write as _;

const HEADER: &str = "<?xml version='1.0'?>\n";

/// A `<methodResponse>` carrying `value`.
pub fn encode_response(value: &Value) -> String {
    let mut out = String::with_capacity(160);
    out.push_str(HEADER);
    out.push_str("<methodResponse>\n<params>\n<param>\n");
    write_value(&mut out, value, Foreign::Replace);
    out.push_str("</param>\n</params>\n</methodResponse>\n");
    out
}

/// A `<methodResponse>` carrying `fault`.
pub fn encode_fault(fault: &Fault) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(HEADER);
    out.push_str("<methodResponse>\n<fault>\n");
    write_value(&mut out, &fault_struct(fault), Foreign::Replace);
    out.push_str("</fault>\n</methodResponse>\n");
    out
}

/// The struct a fault travels as (also inside `system.multicall` results).
pub fn fault_struct(fault: &Fault) -> Value {
    Value::Struct(vec![
        ("faultCode".into(), Value::Int(fault.code)),
        ("faultString".into(), Value::String(fault.message.clone())),
    ])
}

/// A `<methodCall>` of `name` with `params`.
pub fn encode_call(name: &str, params: &[Value]) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(HEADER);
    out.push_str("<methodCall>\n<methodName>");
    write_text(&mut out, name, Foreign::Raw);
    out.push_str("</methodName>\n<params>\n");
    for param in params {
        out.push_str("<param>\n");
        write_value(&mut out, param, Foreign::Raw);
        out.push_str("</param>\n");
    }
    out.push_str("</params>\n</methodCall>\n");
    out
}

/// What becomes of a character XML 1.0 cannot carry (a C0 control other
/// than TAB, LF and CR, U+FFFE, U+FFFF).
#[derive(Debug, Clone, Copy)]
enum Foreign {
    /// Written as U+FFFD, in answers: lockd refuses such names, but a lock
    /// file written by hand may hold one, and every answer must stay
    /// well-formed XML 1.0.
    Replace,
    /// Written as it is, in calls, as Python's `xmlrpc.client` writes it:
    /// the daemon reads it and refuses the name (fault 4).
    Raw,
}

/// Character data, escaped; a CR is written as a reference so that XML's
/// line-end normalisation does not turn it into LF on the other side.
fn write_text(out: &mut String, text: &str, foreign: Foreign) {
    // One pass over the bytes: runs of plain text are copied whole, and
    // only what needs it is replaced. Every byte looked at below starts a
    // character, so each slice taken is on character boundaries.
    let bytes = text.as_bytes();
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        let (replacement, len) = match bytes[at] {
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            b'&' => ("&amp;", 1),
            b'\r' => ("&#13;", 1),
            b'\t' | b'\n' => {
                at += 1;
                continue;
            }
            0..=0x1f => (foreign.instead(&text[at..at + 1]), 1),
            // U+FFFE and U+FFFF: EF BF BE and EF BF BF.
            0xef if bytes[at + 1] == 0xbf && matches!(bytes[at + 2], 0xbe | 0xbf) => {
                (foreign.instead(&text[at..at + 3]), 3)
            }
            _ => {
                at += 1;
                continue;
            }
        };
        out.push_str(&text[copied..at]);
        out.push_str(replacement);
        at += len;
        copied = at;
    }
    out.push_str(&text[copied..]);
}

impl Foreign {
    /// What is written for `c`, a character XML 1.0 cannot carry.
    fn instead(self, c: &str) -> &str {
        match self {
            Self::Replace => "\u{fffd}",
            Self::Raw => c,
        }
    }
}

fn write_value(out: &mut String, value: &Value, foreign: Foreign) {
    out.push_str("<value>");
    match value {
        Value::Int(i) => {
            let _ = write!(out, "<int>{i}</int>");
        }
        Value::I8(i) => {
            let _ = write!(out, "<i8>{i}</i8>");
        }
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::String(s) => {
            out.push_str("<string>");
            write_text(out, s, foreign);
            out.push_str("</string>");
        }
        Value::Double(d) => {
            let _ = write!(out, "<double>{d:?}</double>");
        }
        Value::DateTime(s) => {
            out.push_str("<dateTime.iso8601>");
            write_text(out, s, foreign);
            out.push_str("</dateTime.iso8601>");
        }
        Value::Base64(bytes) => {
            out.push_str("<base64>\n");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
            out.push_str("\n</base64>");
        }
        Value::Struct(members) => {
            out.push_str("<struct>\n");
            for (name, member) in members {
                out.push_str("<member>\n<name>");
                write_text(out, name, foreign);
                out.push_str("</name>\n");
                write_value(out, member, foreign);
                out.push_str("</member>\n");
            }
            out.push_str("</struct>");
        }
        Value::Array(items) => {
            out.push_str("<array><data>\n");
            for item in items {
                write_value(out, item, foreign);
            }
            out.push_str("</data></array>");
        }
        Value::Nil => out.push_str("<nil/>"),
    }
    out.push_str("</value>\n");
}
