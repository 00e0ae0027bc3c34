//! The dispatcher against a model: any sequence of calls on a few
//! resources and clients answers what a plain map of holders says it
//! should, tokens only grow, and calls of any shape never break it.

use super::handle;
use crate::locks::{Durability, Lockd, Options};
use crate::xmlrpc::{Value, encode_call, parse_response};
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    Lock(usize, usize),
    Unlock(usize, usize),
    Acquire(usize, usize, bool),
    /// With the current token, a stale one, or none.
    Release(usize, usize, Option<bool>),
    Status(usize),
    Check(usize, bool),
    Break(usize),
}

const RESOURCES: [&str; 3] = ["a", "b/c", "ü"];
const CLIENTS: [&str; 3] = ["x", "y", "z"];

fn op() -> impl Strategy<Value = Op> {
    let (r, c) = (0..RESOURCES.len(), 0..CLIENTS.len());
    prop_oneof![
        (r.clone(), c.clone()).prop_map(|(r, c)| Op::Lock(r, c)),
        (r.clone(), c.clone()).prop_map(|(r, c)| Op::Unlock(r, c)),
        (r.clone(), c.clone(), any::<bool>()).prop_map(|(r, c, re)| Op::Acquire(r, c, re)),
        (r.clone(), c, proptest::option::of(any::<bool>()))
            .prop_map(|(r, c, t)| Op::Release(r, c, t)),
        r.clone().prop_map(Op::Status),
        (r.clone(), any::<bool>()).prop_map(|(r, t)| Op::Check(r, t)),
        r.prop_map(Op::Break),
    ]
}

fn call(lockd: &Lockd, method: &str, params: Vec<Value>) -> Result<Value, i32> {
    let answer = handle(lockd, encode_call(method, &params).as_bytes());
    parse_response(answer.as_bytes())
        .expect("a well-formed response")
        .map_err(|fault| fault.code)
}

fn token_of(v: &Value) -> u64 {
    match v.member("token") {
        Some(Value::I8(t)) => *t as u64,
        other => panic!("no token: {other:?}"),
    }
}

fn open() -> (tempfile::TempDir, Lockd) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability: Durability::None,
        lock_delay: Duration::ZERO,
        max_wait: Duration::ZERO,
        ..Options::default()
    };
    let lockd = Lockd::open_with(dir.path(), &options).unwrap();
    (dir, lockd)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_answer_is_what_a_map_of_holders_says(ops in proptest::collection::vec(op(), 1..60)) {
        let (_dir, lockd) = open();
        // resource -> (holder, token)
        let mut model: HashMap<usize, (usize, u64)> = HashMap::new();
        // Holders whose lock was broken: told fault 5, not 2.
        let mut broken: HashMap<usize, usize> = HashMap::new();
        let mut last_token = 0;
        for op in ops {
            let s = |i: usize| Value::from(RESOURCES[i]);
            let c = |i: usize| Value::from(CLIENTS[i]);
            match op {
                Op::Lock(r, cl) | Op::Acquire(r, cl, false) => {
                    let method = if matches!(op, Op::Lock(..)) { "lock" } else { "lockd.acquire" };
                    let got = call(&lockd, method, vec![s(r), c(cl)]);
                    match model.get(&r) {
                        Some(_) => prop_assert_eq!(got, Err(1)),
                        None => {
                            prop_assert!(got.is_ok(), "{:?}", got);
                            let token = token_of(&call(&lockd, "lockd.status", vec![s(r)]).unwrap());
                            prop_assert!(token > last_token);
                            last_token = token;
                            model.insert(r, (cl, token));
                            broken.remove(&r);
                        }
                    }
                }
                Op::Acquire(r, cl, true) => {
                    let options = Value::Struct(vec![("reentrant".into(), Value::Bool(true))]);
                    let got = call(&lockd, "lockd.acquire", vec![s(r), c(cl), options]);
                    match model.get(&r) {
                        Some(&(holder, token)) if holder == cl => {
                            prop_assert_eq!(token_of(&got.unwrap()), token)
                        }
                        Some(_) => prop_assert_eq!(got, Err(1)),
                        None => {
                            let token = token_of(&got.unwrap());
                            prop_assert!(token > last_token);
                            last_token = token;
                            model.insert(r, (cl, token));
                            broken.remove(&r);
                        }
                    }
                }
                Op::Unlock(r, cl) | Op::Release(r, cl, _) => {
                    let mut params = vec![s(r), c(cl)];
                    let mut stale = false;
                    let method = match op {
                        Op::Release(_, _, Some(current)) => {
                            let token = model.get(&r).map_or(1, |&(_, t)| t);
                            stale = !current;
                            params.push(Value::from((if current { token } else { token + 1 }).to_string()));
                            "lockd.release"
                        }
                        Op::Release(..) => "lockd.release",
                        _ => "unlock",
                    };
                    let got = call(&lockd, method, params);
                    match model.get(&r) {
                        None if broken.get(&r) == Some(&cl) => prop_assert_eq!(got, Err(5)),
                        None => prop_assert_eq!(got, Err(2)),
                        Some(&(holder, _)) if holder != cl => prop_assert_eq!(got, Err(3)),
                        Some(_) if stale => prop_assert_eq!(got, Err(5)),
                        Some(_) => {
                            prop_assert_eq!(got, Ok(Value::Nil));
                            model.remove(&r);
                        }
                    }
                }
                Op::Status(r) => {
                    let got = call(&lockd, "lockd.status", vec![s(r)]).unwrap();
                    match model.get(&r) {
                        None => prop_assert_eq!(got, Value::Nil),
                        Some(&(holder, token)) => {
                            prop_assert_eq!(got.member("client"), Some(&c(holder)));
                            prop_assert_eq!(token_of(&got), token);
                        }
                    }
                }
                Op::Check(r, current) => {
                    let token = model.get(&r).map_or(last_token, |&(_, t)| t);
                    let token = if current { token } else { token + 1 };
                    let got = call(&lockd, "lockd.check", vec![s(r), Value::from(token.to_string())]);
                    let valid = current && model.contains_key(&r);
                    prop_assert_eq!(got, Ok(Value::Bool(valid)));
                }
                Op::Break(r) => {
                    let got = call(&lockd, "lockd.break_lock", vec![s(r), Value::from("test")]);
                    match model.remove(&r) {
                        None => prop_assert_eq!(got, Err(2)),
                        Some((holder, _)) => {
                            let lock = got.unwrap();
                            prop_assert_eq!(lock.member("client"), Some(&c(holder)));
                            broken.insert(r, holder);
                            // The break used up a token.
                            last_token += 1;
                        }
                    }
                }
            }
        }
        let listed = call(&lockd, "lockd.list", vec![]).unwrap();
        let Value::Array(listed) = listed else { panic!("list: {listed:?}") };
        prop_assert_eq!(listed.len(), model.len());
    }

    #[test]
    fn calls_of_any_shape_get_a_well_formed_answer(
        method in prop_oneof![
            Just("lock"), Just("unlock"), Just("lockd.acquire"), Just("lockd.release"),
            Just("lockd.renew"), Just("lockd.status"), Just("lockd.list"), Just("lockd.check"),
            Just("lockd.break_lock"), Just("system.multicall"), Just("system.methodHelp"),
        ],
        params in proptest::collection::vec(prop_oneof![
            any::<String>().prop_map(Value::String),
            any::<i32>().prop_map(Value::Int),
            any::<i64>().prop_map(Value::I8),
            (-10.0f64..1e6).prop_map(Value::Double),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Nil),
            Just(Value::Struct(vec![("ttl".into(), Value::Int(-1))])),
            Just(Value::Array(vec![Value::Struct(vec![("methodName".into(), "lock".into())])])),
        ], 0..5),
    ) {
        let (_dir, lockd) = open();
        let answer = handle(&lockd, encode_call(method, &params).as_bytes());
        prop_assert!(parse_response(answer.as_bytes()).is_ok(), "{}", answer);
    }
}
