//! The XML-RPC value model.

/// One XML-RPC value. `<int>`/`<i4>` are [`Value::Int`], `<i8>` is
/// [`Value::I8`]; a `<value>` with no type element is a string.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i32),
    I8(i64),
    Bool(bool),
    String(String),
    Double(f64),
    /// `<dateTime.iso8601>`, kept as the text that was sent.
    DateTime(String),
    Base64(Vec<u8>),
    /// Members in the order they were sent.
    Struct(Vec<(String, Value)>),
    Array(Vec<Value>),
    Nil,
}

impl Value {
    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer of either width.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i64::from(i)),
            Value::I8(i) => Some(i),
            _ => None,
        }
    }

    /// The member `name` of a struct.
    pub fn member(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The XML-RPC type name, as `system.methodSignature` spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::I8(_) => "i8",
            Value::Bool(_) => "boolean",
            Value::String(_) => "string",
            Value::Double(_) => "double",
            Value::DateTime(_) => "dateTime.iso8601",
            Value::Base64(_) => "base64",
            Value::Struct(_) => "struct",
            Value::Array(_) => "array",
            Value::Nil => "nil",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
