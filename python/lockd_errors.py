"""The exceptions of lockd's Python modules, one class per fault of the
daemon's XML-RPC methods: the same names for the same things whether the
locks are served in-process (``lockd_component``) or by lockd hosts
(``lockd_client``). Each carries the fault's ``code``; its message is the
fault's text."""

import ast
import re

# The exception classes, exported by lockd_client and lockd_component too.
ERRORS = [
    "LockError",
    "AlreadyLocked",
    "NotLocked",
    "NotOwner",
    "InvalidName",
    "LeaseExpired",
    "StaleToken",
    "WaitTimedOut",
    "StoreUnavailable",
    "StorageError",
]

__all__ = ERRORS + ["from_fault"]


class LockError(Exception):
    """A lock operation that did not happen; ``code`` is the daemon's fault
    code for it."""

    code = 0


class _Held(LockError):
    """A refusal naming the lock's ``holder``."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder


def _fault(name, base, code, doc):
    """An exception class for the daemon's fault ``code``."""
    return type(name, (base,), {"code": code, "__doc__": doc, "__module__": __name__})


AlreadyLocked = _fault(
    "AlreadyLocked",
    _Held,
    1,
    "Someone holds the lock (``holder``), or it is unavailable for the "
    "lock-delay after it expired or was broken (``holder`` None).",
)
NotLocked = _fault("NotLocked", LockError, 2, "Nobody holds the lock.")
NotOwner = _fault("NotOwner", _Held, 3, "Another client (``holder``) holds the lock.")
InvalidName = _fault("InvalidName", LockError, 4, "A resource or client name that cannot be used.")
LeaseExpired = _fault(
    "LeaseExpired", LockError, 5, "The caller's lease ran out (or its lock was broken)."
)
StaleToken = _fault("StaleToken", LockError, 5, "The token given is not the current holder's.")
WaitTimedOut = _fault("WaitTimedOut", LockError, 6, "The wait for the lock ran out.")
StoreUnavailable = _fault(
    "StoreUnavailable",
    LockError,
    7,
    "Cluster mode: etcd had no leader or did not answer in time. The text "
    "says whether the change did not happen or its outcome is unknown.",
)
StorageError = _fault(
    "StorageError",
    LockError,
    -32603,
    "The lock directory could not be read or written; nothing happened.",
)

_BY_CODE = {2: NotLocked, 4: InvalidName, 6: WaitTimedOut, 7: StoreUnavailable, -32603: StorageError}

# The holder in a fault's text, quoted as Python's repr() quotes a str.
_ALREADY = re.compile(r"Resource already locked by ('.*'|\".*\")\Z", re.S)
_OWNER = re.compile(r"Resource locked by ('.*?'|\".*?\") cannot be unlocked by ", re.S)


def _holder(pattern, message):
    match = pattern.match(message)
    if match is None:
        return None
    try:
        return ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None


def from_fault(code, message):
    """The exception for the daemon's fault ``code`` with text ``message``;
    a code without a class of its own (a malformed call: -32700 to -32600)
    gives a LockError with that ``code``."""
    if code == 1:
        return AlreadyLocked(message, _holder(_ALREADY, message))
    if code == 3:
        return NotOwner(message, _holder(_OWNER, message))
    if code == 5:
        cls = StaleToken if message.startswith("Stale fencing token") else LeaseExpired
        return cls(message)
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    error = LockError(message)
    error.code = code
    return error
