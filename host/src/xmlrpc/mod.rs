//! XML-RPC (<http://xmlrpc.com/spec.md>) as bytes in and bytes out: method
//! calls and responses, every value type, nothing about what a method means.

mod decode;
mod encode;
mod value;

pub use decode::{ParseError, parse_call, parse_response};
pub use encode::{encode_call, encode_fault, encode_response, fault_struct};
pub use value::Value;

/// A decoded `<methodCall>`.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    pub name: String,
    pub params: Vec<Value>,
}

/// An XML-RPC fault: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub code: i32,
    pub message: String,
}

impl Fault {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fault {}: {}", self.code, self.message)
    }
}

impl std::error::Error for Fault {}

#[cfg(test)]
mod tests;
