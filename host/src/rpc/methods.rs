//! Every method, as `system.listMethods`, `system.methodHelp` and
//! `system.methodSignature` describe it.

/// One method's description.
pub struct Method {
    pub name: &'static str,
    /// Each signature: the return type, then the parameter types.
    pub signatures: &'static [&'static [&'static str]],
    pub help: &'static str,
}

const LOCK_STRUCT: &str = "struct";

/// Sorted by name, as `system.listMethods` returns them.
pub const METHODS: &[Method] = &[
    Method {
        name: "lock",
        signatures: &[&["nil", "string", "string"]],
        help: "lock(resource, client): lock resource for client. Fault 1 if anyone, \
               client included, holds it already.",
    },
    Method {
        name: "lockd.acquire",
        signatures: &[
            &[LOCK_STRUCT, "string", "string"],
            &[LOCK_STRUCT, "string", "string", "struct"],
        ],
        help: "lockd.acquire(resource, client[, options]): take the lock and return it as \
               {resource, client, token, acquired, expires, ttl}. options: ttl (seconds; a \
               lease, renewed with lockd.renew), wait (seconds to wait in line for it; 0 tries \
               once), reentrant (true: if client holds it, return that lock), request_id (a \
               string the same for every retry: in cluster mode a retry of an acquire that took \
               the lock gets that lock). Fault 1 if held (or unavailable for the lock-delay), 6 \
               if the wait ran out, 7 if the lock store is unavailable.",
    },
    Method {
        name: "lockd.break_lock",
        signatures: &[&[LOCK_STRUCT, "string", "string"]],
        help: "lockd.break_lock(resource, reason): remove the lock whoever holds it and \
               return it; logged with reason. Its token stops being valid, and the resource \
               stays unavailable for the lock-delay. Fault 2 if not locked.",
    },
    Method {
        name: "lockd.check",
        signatures: &[
            &["boolean", "string", "i8"],
            &["boolean", "string", "string"],
        ],
        help: "lockd.check(resource, token): whether token (an int, or a string of digits) \
               is the fencing token of the lock held on resource now.",
    },
    Method {
        name: "lockd.list",
        signatures: &[
            &["array"],
            &["array", "string"],
            &["array", "string", "struct"],
        ],
        help: "lockd.list([prefix[, options]]): the held locks whose resource starts with \
               prefix, sorted by resource, each as lockd.status returns it. options: limit \
               (at most this many), after (only resources sorting after this one: pass a \
               page's last resource for the next page), count (true: return how many, an int, \
               instead).",
    },
    Method {
        name: "lockd.release",
        signatures: &[
            &["nil", "string", "string"],
            &["nil", "string", "string", "i8"],
        ],
        help: "lockd.release(resource, client[, token]): release client's lock; with token, \
               only if it is the lock's. Fault 2 if not locked, 3 if another client holds it, \
               5 if client's lease ran out or the token is stale.",
    },
    Method {
        name: "lockd.renew",
        signatures: &[
            &[LOCK_STRUCT, "string", "string", "double"],
            &[LOCK_STRUCT, "string", "string", "double", "i8"],
        ],
        help: "lockd.renew(resource, client, ttl[, token]): make client's lease run out ttl \
               seconds from now and return the lock. Faults as lockd.release.",
    },
    Method {
        name: "lockd.status",
        signatures: &[&[LOCK_STRUCT, "string"]],
        help: "lockd.status(resource): the lock held on resource as {resource, client, \
               token, acquired, expires, ttl} (times in seconds since the Unix epoch; expires \
               and ttl nil without a lease), or nil if it is free.",
    },
    Method {
        name: "system.listMethods",
        signatures: &[&["array"]],
        help: "system.listMethods(): the names of all methods.",
    },
    Method {
        name: "system.methodHelp",
        signatures: &[&["string", "string"]],
        help: "system.methodHelp(name): what method name does.",
    },
    Method {
        name: "system.methodSignature",
        signatures: &[&["array", "string"]],
        help: "system.methodSignature(name): the signatures of method name, each an \
               array of the return type followed by the parameter types.",
    },
    Method {
        name: "system.multicall",
        signatures: &[&["array", "array"]],
        help: "system.multicall(calls): run each {'methodName': ..., 'params': [...]} \
               in order; each result is [value] or a fault struct.",
    },
    Method {
        name: "unlock",
        signatures: &[&["nil", "string", "string"]],
        help: "unlock(resource, client): release client's lock on resource. Fault 2 if \
               nobody holds it, fault 3 if another client does.",
    },
];

/// The method called `name`.
pub fn method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// Whether the method called `name` does work that grows with the locks
/// held (see [`crate::gate`]).
pub fn grows_with_locks(name: &str) -> bool {
    name == "lockd.list"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_sorted_and_each_help_starts_with_its_name() {
        let names: Vec<_> = METHODS.iter().map(|m| m.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for m in METHODS {
            assert!(m.help.starts_with(&format!("{}(", m.name)), "{}", m.name);
            assert!(!m.signatures.is_empty());
        }
    }
}
