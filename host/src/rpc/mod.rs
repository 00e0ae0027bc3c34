//! Dispatch: which XML-RPC method does what to the lock directory, the
//! parameters each takes, and the fault each failure becomes.

mod methods;
mod ops;
mod params;
mod parking;
#[cfg(test)]
mod properties;

use crate::auth::Role;
use crate::error::{LockError, code};
use crate::locks::Lockd;
use crate::xmlrpc::{self, Fault, MethodCall, Value};
use methods::METHODS;
use params::Params;

pub use ops::lock_value;
pub use parking::{Answered, Job, Later, Spawn, handle_parking};

/// Answers one HTTP request body with the XML-RPC response body: a result,
/// or a fault for anything that went wrong, malformed input included.
pub fn handle(lockd: &Lockd, body: &[u8]) -> String {
    handle_as(lockd, body, Role::Operator)
}

/// [`handle`] for a caller with `role`.
pub fn handle_as(lockd: &Lockd, body: &[u8], role: Role) -> String {
    let (label, result) = match parse(body) {
        Ok(call) => (label(&call), dispatch(lockd, &call, role)),
        Err(fault) => ("invalid", Err(fault)),
    };
    counted(lockd, label, result)
}

/// The method's name for the metrics: one of [`METHODS`], or `unknown`.
fn label(call: &MethodCall) -> &'static str {
    methods::method(&call.name).map_or("unknown", |m| m.name)
}

/// Counts the call and encodes its result.
fn counted(lockd: &Lockd, label: &'static str, result: Result<Value, Fault>) -> String {
    lockd
        .metrics()
        .call(label, result.as_ref().err().map(|f| f.code));
    encode(result)
}

fn parse(body: &[u8]) -> Result<MethodCall, Fault> {
    xmlrpc::parse_call(body).map_err(|e| {
        let code = match e {
            xmlrpc::ParseError::NotWellFormed(_) => code::NOT_WELL_FORMED,
            xmlrpc::ParseError::Invalid(_) => code::INVALID_REQUEST,
        };
        Fault::new(code, e.to_string())
    })
}

fn encode(result: Result<Value, Fault>) -> String {
    match result {
        Ok(value) => xmlrpc::encode_response(&value),
        Err(fault) => xmlrpc::encode_fault(&fault),
    }
}

/// Runs one call (entries of `system.multicall` are refused its nesting
/// by [`entry_call`]).
fn dispatch(lockd: &Lockd, call: &MethodCall, role: Role) -> Result<Value, Fault> {
    if let Some(op) = ops::op(lockd, call, role)? {
        let reply = lockd.submit(op.request, op.terms).map_err(fault)?;
        return (op.answer)(reply).map_err(fault);
    }
    match call.name.as_str() {
        "system.listMethods" => {
            Params::new(call, "()", 0, 0)?;
            Ok(Value::Array(
                METHODS.iter().map(|m| Value::from(m.name)).collect(),
            ))
        }
        "system.methodHelp" => {
            let p = Params::new(call, "(name)", 1, 1)?;
            Ok(Value::from(method(p.string(0, "name")?)?.help))
        }
        "system.methodSignature" => {
            let p = Params::new(call, "(name)", 1, 1)?;
            let signatures = method(p.string(0, "name")?)?
                .signatures
                .iter()
                .map(|s| Value::Array(s.iter().map(|&t| Value::from(t)).collect()));
            Ok(Value::Array(signatures.collect()))
        }
        "system.multicall" => multicall(lockd, call, role),
        name => Err(not_found(name)),
    }
}

fn multicall(lockd: &Lockd, call: &MethodCall, role: Role) -> Result<Value, Fault> {
    let mut listed = Listed::default();
    let results = multicall_entries(call)?.iter().map(|entry| {
        let result = entry_call(entry).and_then(|call| {
            listed.check(&call.name)?;
            let result = dispatch(lockd, &call, role);
            listed.note(&call.name, &result);
            result
        });
        multicall_result(result)
    });
    Ok(Value::Array(results.collect()))
}

/// The most locks one `system.multicall` lists in all, past its first
/// list (which lists what it asks, as a call of its own would): one
/// request of `--max-body` could otherwise ask for thousands of lists of
/// every lock, an answer of gigabytes.
const MULTICALL_LISTED: usize = if cfg!(test) { 3 } else { 10_000 };

/// The locks a `system.multicall` has listed so far.
#[derive(Default)]
struct Listed {
    locks: usize,
    lists: usize,
}

impl Listed {
    /// Refuses a list once the multicall has listed [`MULTICALL_LISTED`]
    /// locks.
    fn check(&self, name: &str) -> Result<(), Fault> {
        if methods::grows_with_locks(name) && self.lists > 0 && self.locks >= MULTICALL_LISTED {
            return Err(Fault::new(
                code::INVALID_REQUEST,
                format!(
                    "this system.multicall has listed {} locks already (at most \
                     {MULTICALL_LISTED} past its first list): list the rest in calls of their \
                     own, a page at a time (limit, after)",
                    self.locks
                ),
            ));
        }
        Ok(())
    }

    /// Counts what an entry called `name` listed.
    fn note(&mut self, name: &str, result: &Result<Value, Fault>) {
        if methods::grows_with_locks(name) {
            self.lists += 1;
            if let Ok(Value::Array(locks)) = result {
                self.locks += locks.len();
            }
        }
    }
}

/// The entries of a `system.multicall`.
fn multicall_entries(call: &MethodCall) -> Result<&Vec<Value>, Fault> {
    match call.params.as_slice() {
        [Value::Array(entries)] => Ok(entries),
        _ => Err(Fault::new(
            code::INVALID_PARAMS,
            "system.multicall(calls) takes one array of {'methodName', 'params'} structs",
        )),
    }
}

/// The call one multicall entry makes; multicalls do not nest.
fn entry_call(entry: &Value) -> Result<MethodCall, Fault> {
    match (entry.member("methodName"), entry.member("params")) {
        (Some(Value::String(name)), Some(Value::Array(_))) if name == "system.multicall" => Err(
            Fault::new(code::INVALID_REQUEST, "system.multicall cannot be nested"),
        ),
        (Some(Value::String(name)), Some(Value::Array(params))) => Ok(MethodCall {
            name: name.clone(),
            params: params.clone(),
        }),
        _ => Err(Fault::new(
            code::INVALID_PARAMS,
            "each multicall entry is a struct with a string 'methodName' and an array 'params'",
        )),
    }
}

/// One entry's result as `system.multicall` returns it: `[value]`, or the
/// fault's struct.
fn multicall_result(result: Result<Value, Fault>) -> Value {
    match result {
        Ok(value) => Value::Array(vec![value]),
        Err(fault) => xmlrpc::fault_struct(&fault),
    }
}

/// The wire form of a failed lock operation.
pub fn fault(error: LockError) -> Fault {
    Fault::new(error.fault_code(), error.to_string())
}

fn not_found(name: &str) -> Fault {
    Fault::new(
        code::METHOD_NOT_FOUND,
        format!("method {name:?} is not supported"),
    )
}

fn method(name: &str) -> Result<&'static methods::Method, Fault> {
    methods::method(name).ok_or_else(|| not_found(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(lockd: &Lockd, call: &str, params: &[Value]) -> Result<Value, Fault> {
        let body = xmlrpc::encode_call(call, params);
        xmlrpc::parse_response(handle(lockd, body.as_bytes()).as_bytes()).unwrap()
    }

    #[test]
    fn lock_and_unlock_map_to_faults_1_2_3_4() {
        let tmp = tempfile::tempdir().unwrap();
        let lockd = Lockd::open(tmp.path()).unwrap();
        let p = |r: &str, c: &str| [Value::from(r), Value::from(c)];
        assert_eq!(answer(&lockd, "lock", &p("r", "a")), Ok(Value::Nil));
        assert_eq!(answer(&lockd, "lock", &p("r", "a")).unwrap_err().code, 1);
        assert_eq!(answer(&lockd, "unlock", &p("r", "b")).unwrap_err().code, 3);
        assert_eq!(answer(&lockd, "unlock", &p("r", "a")), Ok(Value::Nil));
        assert_eq!(answer(&lockd, "unlock", &p("r", "a")).unwrap_err().code, 2);
        assert_eq!(answer(&lockd, "lock", &p("", "a")).unwrap_err().code, 4);
    }

    #[test]
    fn a_multicall_lists_a_bounded_number_of_locks_past_its_first_list() {
        let tmp = tempfile::tempdir().unwrap();
        let lockd = Lockd::open(tmp.path()).unwrap();
        for r in ["a", "b"] {
            answer(&lockd, "lock", &[r.into(), "c".into()]).unwrap();
        }
        let entry = |name: &str, params: Vec<Value>| {
            Value::Struct(vec![
                ("methodName".into(), Value::from(name)),
                ("params".into(), Value::Array(params)),
            ])
        };
        let list = || entry("lockd.list", vec!["".into()]);
        let calls = vec![
            list(),
            list(),
            list(),
            entry("lockd.status", vec!["a".into()]),
        ];
        let Ok(Value::Array(results)) = answer(&lockd, "system.multicall", &[Value::Array(calls)])
        else {
            panic!("multicall is not an array");
        };
        // 2 locks, then 4 (at most 3 past the first list): the third list
        // is refused, and the call after it still runs.
        assert!(
            matches!(&results[0], Value::Array(r) if matches!(&r[0], Value::Array(l) if l.len() == 2))
        );
        assert!(
            matches!(&results[1], Value::Array(r) if matches!(&r[0], Value::Array(l) if l.len() == 2))
        );
        assert_eq!(
            results[2].member("faultCode"),
            Some(&Value::Int(code::INVALID_REQUEST)),
            "{:?}",
            results[2]
        );
        assert!(matches!(&results[3], Value::Array(_)), "{:?}", results[3]);
    }

    #[test]
    fn introspection() {
        let tmp = tempfile::tempdir().unwrap();
        let lockd = Lockd::open(tmp.path()).unwrap();
        let Ok(Value::Array(names)) = answer(&lockd, "system.listMethods", &[]) else {
            panic!("listMethods is not an array");
        };
        assert_eq!(names.len(), METHODS.len());
        for name in names {
            let help = answer(&lockd, "system.methodHelp", std::slice::from_ref(&name)).unwrap();
            assert!(help.as_str().unwrap().starts_with(name.as_str().unwrap()));
        }
        let unknown = answer(&lockd, "system.methodHelp", &["nosuch".into()]).unwrap_err();
        assert_eq!(unknown.code, code::METHOD_NOT_FOUND);
        let wrong = answer(&lockd, "system.listMethods", &["extra".into()]).unwrap_err();
        assert_eq!(wrong.code, code::INVALID_PARAMS);
    }

    #[test]
    fn multicall_runs_each_entry_and_reports_each_fault() {
        let tmp = tempfile::tempdir().unwrap();
        let lockd = Lockd::open(tmp.path()).unwrap();
        let entry = |name: &str, params: Vec<Value>| {
            Value::Struct(vec![
                ("methodName".into(), name.into()),
                ("params".into(), Value::Array(params)),
            ])
        };
        let calls = Value::Array(vec![
            entry("lock", vec!["r".into(), "a".into()]),
            entry("lock", vec!["r".into(), "b".into()]),
            entry("system.multicall", vec![Value::Array(vec![])]),
            Value::Struct(vec![("methodName".into(), "lock".into())]),
            entry("unlock", vec!["r".into(), "a".into()]),
        ]);
        let Ok(Value::Array(results)) = answer(&lockd, "system.multicall", &[calls]) else {
            panic!("multicall did not return an array");
        };
        let code = |v: &Value| v.member("faultCode").and_then(Value::as_i64);
        assert_eq!(results[0], Value::Array(vec![Value::Nil]));
        assert_eq!(code(&results[1]), Some(1));
        assert_eq!(code(&results[2]), Some(i64::from(code::INVALID_REQUEST)));
        assert_eq!(code(&results[3]), Some(i64::from(code::INVALID_PARAMS)));
        assert_eq!(results[4], Value::Array(vec![Value::Nil]));
    }
}
