//! Reading a call's parameters: each wrong count or type is fault -32602,
//! naming the method's parameters and what was sent.

use crate::error::code;
use crate::xmlrpc::{Fault, MethodCall, Value};
use std::time::Duration;

/// The parameters of one call, checked against its usage line.
pub struct Params<'a> {
    call: &'a MethodCall,
    /// How the method is called, e.g. `lockd.renew(resource, client, ttl[, token])`.
    usage: &'static str,
}

impl<'a> Params<'a> {
    /// `call`'s parameters, `min` to `max` of them.
    pub fn new(
        call: &'a MethodCall,
        usage: &'static str,
        min: usize,
        max: usize,
    ) -> Result<Self, Fault> {
        let params = Self { call, usage };
        let n = call.params.len();
        if n < min || n > max {
            let got: Vec<_> = call.params.iter().map(Value::type_name).collect();
            return Err(params.wrong(format!("got {n} parameters ({})", got.join(", "))));
        }
        Ok(params)
    }

    /// Fault -32602 explaining `what`.
    pub fn wrong(&self, what: impl std::fmt::Display) -> Fault {
        Fault::new(
            code::INVALID_PARAMS,
            format!("{} takes {}: {what}", self.call.name, self.usage),
        )
    }

    /// Parameter `i`, if sent and not nil.
    fn get(&self, i: usize) -> Option<&'a Value> {
        self.call.params.get(i).filter(|v| **v != Value::Nil)
    }

    /// Parameter `i`, a string.
    pub fn string(&self, i: usize, name: &str) -> Result<&'a str, Fault> {
        match self.call.params.get(i) {
            Some(Value::String(s)) => Ok(s),
            other => Err(self.wrong(format!(
                "{name} must be a string, got {}",
                other.map_or("nothing", Value::type_name)
            ))),
        }
    }

    /// Parameter `i`, a string, or `default` if not sent.
    pub fn string_or(&self, i: usize, name: &str, default: &'a str) -> Result<&'a str, Fault> {
        match self.get(i) {
            None => Ok(default),
            Some(_) => self.string(i, name),
        }
    }

    /// Parameter `i`, a fencing token, if sent.
    pub fn token(&self, i: usize) -> Result<Option<u64>, Fault> {
        self.get(i)
            .map(|v| token(v).map_err(|e| self.wrong(e)))
            .transpose()
    }

    /// Parameter `i`, a positive number of seconds.
    pub fn ttl(&self, i: usize, name: &str) -> Result<Duration, Fault> {
        match self.get(i) {
            Some(v) => positive_seconds(v, name).map_err(|e| self.wrong(e)),
            None => Err(self.wrong(format!("{name} must be a number of seconds"))),
        }
    }

    /// Parameter `i`, a struct whose members are among `known`, if sent.
    pub fn options(
        &self,
        i: usize,
        known: &[&str],
    ) -> Result<Option<&'a [(String, Value)]>, Fault> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::Struct(members)) => {
                if let Some((name, _)) = members.iter().find(|(n, _)| !known.contains(&n.as_str()))
                {
                    return Err(self.wrong(format!(
                        "unknown option {name:?} (known: {})",
                        known.join(", ")
                    )));
                }
                Ok(Some(members))
            }
            Some(other) => Err(self.wrong(format!(
                "options must be a struct, got {}",
                other.type_name()
            ))),
        }
    }
}

/// A fencing token sent as `<int>`, `<i8>` or a string of digits (Python's
/// `xmlrpc.client` cannot send `<i8>`).
pub fn token(value: &Value) -> Result<u64, String> {
    let parsed = match value {
        Value::Int(_) | Value::I8(_) => value.as_i64().and_then(|i| u64::try_from(i).ok()),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        format!(
            "a token is a non-negative integer or a string of digits, got {}",
            describe(value)
        )
    })
}

/// A number of seconds, 0 or more, sent as `<int>`, `<i8>` or `<double>`.
pub fn seconds(value: &Value, name: &str) -> Result<Duration, String> {
    let secs = match *value {
        Value::Double(d) => Some(d),
        Value::Int(_) | Value::I8(_) => value.as_i64().map(|i| i as f64),
        _ => None,
    };
    match secs {
        Some(s) if (0.0..1e12).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{name} must be a number of seconds, 0 or more, got {}",
            describe(value)
        )),
    }
}

/// As [`seconds`], but more than 0.
pub fn positive_seconds(value: &Value, name: &str) -> Result<Duration, String> {
    let secs = seconds(value, name)?;
    if secs.is_zero() {
        return Err(format!("{name} must be more than 0 seconds"));
    }
    Ok(secs)
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Int(i) => format!("the int {i}"),
        Value::I8(i) => format!("the i8 {i}"),
        Value::Double(d) => format!("the double {d}"),
        other => other.type_name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_as_ints_or_strings_of_digits() {
        assert_eq!(token(&Value::Int(7)), Ok(7));
        assert_eq!(token(&Value::I8(1 << 40)), Ok(1 << 40));
        assert_eq!(token(&Value::from("18446744073709551615")), Ok(u64::MAX));
        assert!(token(&Value::Int(-1)).is_err());
        assert!(token(&Value::from("12a")).is_err());
        assert!(token(&Value::Double(1.0)).is_err());
    }

    #[test]
    fn seconds_come_as_numbers() {
        assert_eq!(seconds(&Value::Int(2), "ttl"), Ok(Duration::from_secs(2)));
        assert_eq!(
            seconds(&Value::Double(0.25), "ttl"),
            Ok(Duration::from_millis(250))
        );
        assert!(seconds(&Value::Double(-1.0), "ttl").is_err());
        assert!(seconds(&Value::Double(f64::NAN), "ttl").is_err());
        assert!(seconds(&Value::from("5"), "ttl").is_err());
        assert!(positive_seconds(&Value::Int(0), "ttl").is_err());
    }
}
