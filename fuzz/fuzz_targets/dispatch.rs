//! The request dispatcher with the real lock component behind it: calls of
//! every method with parameters of every type, in any order. It never
//! panics, every answer is a well-formed XML-RPC response, and the lock
//! directory only ever holds lock files of resources that are held.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockd::xmlrpc::{Value, encode_call, parse_response};
use lockd::{Durability, Lockd, Options};
use std::sync::OnceLock;
use std::time::Duration;

const METHODS: &[&str] = &[
    "lock",
    "unlock",
    "lockd.acquire",
    "lockd.release",
    "lockd.renew",
    "lockd.status",
    "lockd.list",
    "lockd.check",
    "lockd.break_lock",
    "system.listMethods",
    "system.methodHelp",
    "system.methodSignature",
    "system.multicall",
    "nosuch",
];

struct Fixture {
    lockd: Lockd,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            durability: Durability::None,
            lock_delay: Duration::ZERO,
            max_wait: Duration::from_millis(1),
            ..Options::default()
        };
        let lockd = Lockd::open_with(dir.path(), &options).unwrap();
        Fixture { lockd, _dir: dir }
    })
}

/// Reads values from the fuzzer's bytes: a type byte, then its content.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn text(&mut self) -> String {
        let len = usize::from(self.byte().unwrap_or(0) % 12);
        let take = len.min(self.0.len());
        let (text, rest) = self.0.split_at(take);
        self.0 = rest;
        String::from_utf8_lossy(text).into_owned()
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.byte().unwrap_or(0) % 9 {
            0 | 1 | 2 => Value::String(self.text()),
            3 => Value::Int(i32::from(self.byte().unwrap_or(0)) - 8),
            4 => Value::I8(i64::from(self.byte().unwrap_or(0)) << 40),
            5 => Value::Double(f64::from(self.byte().unwrap_or(0)) / 100.0),
            6 => Value::Bool(self.byte().unwrap_or(0) % 2 == 0),
            7 if depth < 3 => {
                let names = ["ttl", "wait", "reentrant", "methodName", "params", "x"];
                let n = self.byte().unwrap_or(0) % 4;
                Value::Struct(
                    (0..n)
                        .map(|_| {
                            let name = names[usize::from(self.byte().unwrap_or(0)) % names.len()];
                            (name.to_owned(), self.value(depth + 1))
                        })
                        .collect(),
                )
            }
            8 if depth < 3 => {
                let n = self.byte().unwrap_or(0) % 4;
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            _ => Value::Nil,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let mut input = Input(data);
    while let Some(b) = input.byte() {
        let method = METHODS[usize::from(b) % METHODS.len()];
        let n = input.byte().unwrap_or(0) % 5;
        let params: Vec<Value> = (0..n).map(|_| input.value(0)).collect();
        let body = encode_call(method, &params);
        let answer = lockd::rpc::handle(&fixture.lockd, body.as_bytes());
        // A result or a fault, but always a well-formed response.
        let _result = parse_response(answer.as_bytes())
            .unwrap_or_else(|e| panic!("{method}{params:?} answered {answer:?}: {e}"));
    }
    // Every lock file in the directory is a held lock.
    let held = fixture.lockd.list("").unwrap().len();
    let files = std::fs::read_dir(fixture.lockd.dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".lockd"))
        .count();
    assert!(files >= held, "{files} lock files for {held} held locks");
});
