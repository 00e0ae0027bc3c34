"""lockd's lock rules inside a Python program.

The lock component (the ``.wasm`` that ``lockd component --out lockd.wasm``
writes, byte for byte what the daemon runs) runs here on wasmtime, on a lock
directory of your own given to it as its only file system. The directory
has the daemon's format: a daemon started on it later finds every lock
taken here, and the other way round. One process at a time: a LockDir
holds the daemon's advisory lock on the directory (`.lockd.pid`) while it
is open, so it cannot open a directory a daemon serves, nor a daemon one
it has open.

    from lockd_component import LockDir, AlreadyLocked

    locks = LockDir("locks", wasm="lockd.wasm")
    locks.lock("vm-42", "host-a")
    try:
        locks.lock("vm-42", "host-b")
    except AlreadyLocked as e:
        print(e)            # Resource already locked by 'host-a'
    lock = locks.acquire("job", "worker-1", ttl=30)
    locks.release("job", "worker-1", lock["token"])

Errors are exceptions whose ``code`` and message are those of the daemon's
XML-RPC faults, the classes of ``lockd_errors`` (beside this module), which
``lockd_client`` raises too. Needs the ``wasmtime`` package (50.x).
"""

import fcntl
import os

import wasmtime
from wasmtime import component

import lockd_errors
from lockd_errors import (
    AlreadyLocked,
    InvalidName,
    LeaseExpired,
    LockError,
    NotLocked,
    NotOwner,
    StaleToken,
    StorageError,
    StoreUnavailable,
    WaitTimedOut,
)

__all__ = ["LockDir"] + lockd_errors.ERRORS

INTERFACE = "lockd:lockd/locks@0.3.0"


def _record(**fields):
    """A WIT record: field names as the WIT spells them (``ttl_ms`` for
    ``ttl-ms``)."""
    record = component.Record()
    for name, value in fields.items():
        setattr(record, name.replace("_", "-"), value)
    return record


def _field(record, name):
    return getattr(record, name.replace("_", "-"))


def _seconds(ms):
    return None if ms is None else ms / 1000.0


def _millis(seconds, what):
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise InvalidName("%s must be a number of seconds above 0, got %r" % (what, seconds))
    return max(1, round(seconds * 1000))


def _lock(info):
    """A lock as the daemon's XML-RPC answers give it."""
    return {
        "resource": _field(info, "resource"),
        "client": _field(info, "client"),
        "token": _field(info, "token"),
        "acquired": _seconds(_field(info, "acquired_ms")),
        "expires": _seconds(_field(info, "expires_ms")),
        "ttl": _seconds(_field(info, "ttl_ms")),
    }


def _take(path):
    """The directory's advisory lock (the daemon's ``.lockd.pid``), taken
    for this process, or StorageError naming the process that has it."""
    guard = os.open(os.path.join(path, ".lockd.pid"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(guard, 64).decode(errors="replace").strip()
        os.close(guard)
        raise StorageError(
            "another process (pid %s) is using the lock directory %s" % (holder, path)
        ) from None
    os.ftruncate(guard, 0)
    os.write(guard, b"%d\n" % os.getpid())
    return guard


class LockDir:
    """A lock directory, served in this process by the lock component.

    ``path`` is created if missing. ``wasm`` is the component's file
    (default: ``$LOCKD_WASM``, else ``lockd.wasm`` beside this module).
    ``durability`` is ``"always"`` (every change synced before it returns)
    or ``"none"`` (written, synced when the system decides);
    ``lock_delay`` the seconds an expired or broken lock stays unavailable.
    """

    def __init__(self, path, wasm=None, durability="always", lock_delay=5.0):
        if wasm is None:
            here = os.path.dirname(os.path.abspath(__file__))
            wasm = os.environ.get("LOCKD_WASM", os.path.join(here, "lockd.wasm"))
        if durability not in ("always", "none"):
            raise ValueError("durability is 'always' or 'none', got %r" % (durability,))
        os.makedirs(path, exist_ok=True)
        self._guard = _take(path)
        engine = wasmtime.Engine()
        self._store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.preopen_dir(os.fspath(path), "/")
        self._store.set_wasi(wasi)
        linker = component.Linker(engine)
        linker.add_wasip2()
        self._instance = linker.instantiate(
            self._store, component.Component.from_file(engine, os.fspath(wasm))
        )
        self._interface = self._instance.get_export_index(self._store, INTERFACE)
        if self._interface is None:
            raise ValueError("%s does not export %s" % (wasm, INTERFACE))
        self._funcs = {}
        options = _record(
            durability=durability, lock_delay_ms=round(lock_delay * 1000)
        )
        report = self._ok(self._call("open", options))
        #: What opening the directory found: locks held, changes replayed
        #: from the journal of an interrupted run, notes for an operator.
        self.report = {
            "held": _field(report, "held"),
            "replayed": _field(report, "replayed"),
            "notes": list(_field(report, "notes")),
        }

    def close(self):
        """Lets another process open the directory."""
        if self._guard is not None:
            os.close(self._guard)
            self._guard = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, name, *args):
        func = self._funcs.get(name)
        if func is None:
            index = self._instance.get_export_index(self._store, name, self._interface)
            func = self._funcs[name] = self._instance.get_func(self._store, index)
        try:
            return func(self._store, *args)
        finally:
            func.post_return(self._store)

    def _ok(self, result, request=None):
        """The value of a WIT result, or its error raised as the daemon
        would fault."""
        if isinstance(result, component.Variant) and result.tag in ("ok", "err"):
            if result.tag == "ok":
                return result.payload
            error = result.payload
        elif isinstance(result, component.Variant):
            error = result
        else:
            return result
        raise self._error(error, request)

    def _error(self, error, request):
        tag, payload = error.tag, error.payload
        client = _field(request, "client") if request is not None else None
        if tag == "already-locked":
            return AlreadyLocked("Resource already locked by %r" % (payload,), payload)
        if tag == "not-locked":
            return NotLocked("Resource not locked")
        if tag == "not-owner":
            return NotOwner(
                "Resource locked by %r cannot be unlocked by %r" % (payload, client), payload
            )
        if tag == "invalid-name":
            return InvalidName("Invalid name: %s" % (payload,))
        if tag == "cooling-down":
            return AlreadyLocked(
                "Resource unavailable for another %.3f s: its last lock expired or was broken"
                % (payload / 1000.0,)
            )
        if tag == "lease-expired":
            return LeaseExpired("Lease expired: %r no longer holds the lock" % (client,))
        if tag == "stale-token":
            return StaleToken("Stale fencing token: the lock is held with another token")
        return StorageError("The lock directory failed: %s" % (payload,))

    def _apply(self, kind, payload, request=None):
        [result] = self._call("apply", [component.Variant(kind, payload)])
        return self._ok(result, request)

    # gocept.lockd's methods.

    def lock(self, resource, client):
        """Locks ``resource`` for ``client``; AlreadyLocked if anyone holds it."""
        request = _record(resource=resource, client=client)
        self._apply("lock", request, request)

    def unlock(self, resource, client):
        """Releases ``client``'s lock; NotLocked or NotOwner otherwise."""
        request = _record(resource=resource, client=client)
        self._apply("unlock", request, request)

    def holder(self, resource):
        """The client holding ``resource``, or None."""
        return self._apply("holder", resource).payload

    # lockd's own.

    def acquire(self, resource, client, ttl=None, reentrant=False):
        """Takes the lock, with a fencing token and, with ``ttl`` (seconds),
        a lease; ``reentrant`` returns the caller's own lock if it holds it.
        Returns the lock as a dict (resource, client, token, acquired,
        expires, ttl)."""
        ttl_ms = None if ttl is None else _millis(ttl, "ttl")
        request = _record(
            resource=resource, client=client, ttl_ms=ttl_ms, reentrant=bool(reentrant)
        )
        return _lock(self._apply("acquire", request, request).payload)

    def release(self, resource, client, token=None):
        """Releases ``client``'s lock (only the one with ``token``, if given)."""
        request = _record(resource=resource, client=client, token=token)
        self._apply("release", request, request)

    def renew(self, resource, client, ttl, token=None):
        """Makes ``client``'s lease run out ``ttl`` seconds from now."""
        request = _record(
            resource=resource, client=client, ttl_ms=_millis(ttl, "ttl"), token=token
        )
        return _lock(self._apply("renew", request, request).payload)

    def status(self, resource):
        """The lock on ``resource`` as a dict, or None if it is free."""
        info = self._apply("status", resource).payload
        return None if info is None else _lock(info)

    def check(self, resource, token):
        """Whether ``token`` is the current holder's."""
        return self._apply("check", _record(resource=resource, token=token)).payload

    def list(self, prefix=""):
        """The locks held whose resource starts with ``prefix``."""
        return [_lock(info) for info in self._apply("list", prefix).payload]

    def break_lock(self, resource):
        """Removes the lock whoever holds it (as an operator would); returns
        the lock it was. The next holder's token is larger."""
        return _lock(self._apply("break-lock", resource).payload)
