"""What a call whose answer was lost comes to: sent again to the next host
(reads, ``lockd.acquire`` with its ``request_id``, ``lockd.renew``),
settled by asking ``lockd.status`` first (``lock``, ``unlock``,
``lockd.release``, ``lockd.break_lock``), or unknown; what the lock's
status says of the lost try; and the error of a call no host carried out.
No I/O here: failover asks, these rules decide.
"""

from lockd_errors import AlreadyLocked

from .errors import OutcomeUnknown, Unavailable
from .xmlrpc import _is_number

# Calls that change nothing, sent again anywhere. system.* (but
# system.multicall, which may hold changes) are reads too.
_READS = {"lockd.status", "lockd.check", "lockd.list"}

# What a call whose answer was lost is: sent to the next host as it is,
# settled with lockd.status first, or left unknown.
_AGAIN, _SETTLE, _UNKNOWN = "again", "settle", "unknown"


def _is_read(method, params):
    if method == "system.multicall":
        calls = params[0] if len(params) == 1 else None
        return (
            isinstance(calls, list)
            and bool(calls)
            and all(
                isinstance(c, dict)
                and isinstance(c.get("methodName"), str)
                and isinstance(c.get("params", []), list)
                and _is_read(c["methodName"], c.get("params", []))
                for c in calls
            )
        )
    return method in _READS or method.startswith("system.")


def _kind(method, params):
    """What may follow when ``method``'s answer was lost."""
    if _is_read(method, params):
        return _AGAIN
    if method == "lockd.renew":
        return _AGAIN
    names = [p for p in params[:2] if isinstance(p, str)]
    if method == "lockd.acquire":
        options = params[2] if len(params) > 2 else {}
        if isinstance(options, dict) and "request_id" in options:
            return _AGAIN
        return _SETTLE if len(names) == 2 and isinstance(options, dict) else _UNKNOWN
    if method in ("lock", "unlock", "lockd.release"):
        return _SETTLE if len(names) == 2 else _UNKNOWN
    if method == "lockd.break_lock":
        return _SETTLE if params and isinstance(params[0], str) else _UNKNOWN
    return _UNKNOWN


def _wait_of(method, params):
    """The seconds a call may wait in line (``lockd.acquire``'s ``wait``)."""
    if method != "lockd.acquire" or len(params) < 3 or not isinstance(params[2], dict):
        return 0.0
    wait = params[2].get("wait", 0.0)
    return wait if _is_number(wait) else 0.0


def _held_by_caller(method, params, lock, failures):
    return _failed(
        method,
        failures,
        True,
        "%r is held under this client's name (%r, token %d): by this call or an earlier one"
        % (params[0], params[1], lock["token"]),
    )


def _again(method, params, lock, failures):
    """Whether ``method``, its answer lost, is to be sent again now that the
    lock is ``lock`` (lockd.status's answer); False when it is done (it
    returns None); raises what the call comes to otherwise."""
    holder = None if lock is None else lock["client"]
    if method == "lockd.break_lock":
        if lock is None:
            return False
        raise _failed(
            method,
            failures,
            True,
            "%r is held by %r (token %d), maybe a newer holder: not broken again"
            % (params[0], holder, lock["token"]),
        )
    client = params[1]
    if method in ("lock", "lockd.acquire"):
        if holder is None:
            return True
        if holder == client:
            options = params[2] if len(params) > 2 else {}
            if method == "lockd.acquire" and options.get("reentrant"):
                return True  # answered with the caller's lock
            # gocept refuses lock to its holder: the lost try may have
            # taken it, or another run under the same name holds it.
            raise _held_by_caller(method, params, lock, failures)
        raise AlreadyLocked("Resource already locked by %r" % (holder,), holder)
    # unlock, lockd.release
    token = params[2] if len(params) > 2 else None
    return holder == client and (token is None or str(lock["token"]) == str(token))


def _failed(method, failures, unknown, why=None):
    """The error of a call no host carried out: OutcomeUnknown if one may
    have, Unavailable otherwise. With one host its words are the message."""
    if len(failures) == 1 and why is None:
        message = failures[0][1]
        if not message.startswith("Lock store unavailable"):
            message = "%s: %s" % failures[0]
    else:
        said = "; ".join("%s: %s" % failure for failure in failures)
        message = "%s: %s (%s)" % (method, why or "no lockd host answered", said)
    return (OutcomeUnknown if unknown else Unavailable)(message, failures)

