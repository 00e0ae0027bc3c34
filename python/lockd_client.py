"""A client of lockd hosts: gocept.lockd's calls and lockd's own, failover
across the hosts of a cluster, and locks whose lease is kept alive.

    from lockd_client import Client, AlreadyLocked

    lockd = Client("http://a:8000/,http://b:8000/")
    with lockd.hold("vm-42", ttl=15, wait=30) as lock:
        start_vm(fencing_token=lock.token)    # the VM refuses older tokens
        while not lock.lost.is_set():         # broken, or not renewed in time
            ...

Errors are the exceptions of ``lockd_errors``, as ``lockd_component``
raises them for the same faults, and the client's own: ``Unavailable`` (no
host carried the call out), ``OutcomeUnknown`` (it may have happened) and
``ProtocolError`` (a host answered something that is not XML-RPC).

Failover (the rules of docs/cluster.md, as the ``lockd`` command line
follows them): a call goes to the host that answered last and moves on to
the next when a host cannot be reached, answers HTTP 503 or fault 7 "the
change did not happen". When a request was sent and no answer came (a
timeout, the connection lost, fault 7 "the outcome is unknown"), reads,
``lockd.acquire`` with its ``request_id`` and ``lockd.renew`` (which only
ever lengthens the caller's own lease) are sent to the next host; any other change is first settled by asking
another host ``lockd.status``. Each host is tried once per call. With one
URL nothing is sent twice.
"""

import base64
import http.client
import logging
import os
import secrets
import select
import socket
import threading
import time
import urllib.parse
import xml.parsers.expat
import xmlrpc.client

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
    from_fault,
)

__all__ = ["Client", "Lock", "Unavailable", "OutcomeUnknown", "ProtocolError"] + lockd_errors.ERRORS

log = logging.getLogger("lockd_client")

# The refusals that mean a lock is not the caller's any more.
_GONE = (NotLocked, NotOwner, LeaseExpired, StaleToken)


class Unavailable(StoreUnavailable):
    """No host carried the call out: each could not be reached, answered
    HTTP 503 or fault 7 "did not happen", or ran out of time. ``failures``
    lists (url, what happened) for each host tried."""

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class OutcomeUnknown(Unavailable):
    """A change that may have happened, or may yet: a host took the request
    and its answer never came, and no other host could settle it (with
    ``break_lock``: the lock is held, maybe by a newer holder, and is left
    alone)."""


class ProtocolError(LockError):
    """A host answered something other than XML-RPC (HTTP 401, 404, an HTML
    page...), which another host would answer too: not retried."""

    code = None

    def __init__(self, message, url):
        super().__init__(message)
        self.url = url


class _NotSent(Exception):
    """The call surely did not happen on this host."""


class _Lost(Exception):
    """The call was sent to this host and no answer came."""


# Calls that change nothing, sent again anywhere (system.multicall may hold
# changes: it is not).
_READS = {
    "lockd.status",
    "lockd.check",
    "lockd.list",
    "system.listMethods",
    "system.methodHelp",
    "system.methodSignature",
}


def _retried_anywhere(method, params):
    """Whether a call whose answer was lost may be sent to another host as it
    is: it changes nothing, or a retry is answered as the first try was."""
    if method in _READS:
        return True
    if method == "lockd.acquire":
        return len(params) > 2 and "request_id" in params[2]
    return method == "lockd.renew"


def _hosts(urls):
    if isinstance(urls, str):
        urls = urls.split(",")
    urls = [url.strip() for url in urls]
    if not urls:
        raise ValueError("no lockd URL given")
    for url in urls:
        if not url:
            raise ValueError("an empty URL in the list of lockd hosts %r" % (",".join(urls),))
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("%r is not an http:// or https:// URL" % (url,))
        try:
            parts.port
        except ValueError:
            raise ValueError("%r has a malformed port" % (url,)) from None
        if not parts.hostname:
            raise ValueError("%r names no host" % (url,))
    return urls


class _Host:
    """One lockd host: its URL and the kept-alive connections to it that no
    call is using now."""

    def __init__(self, url, user, password, ssl_context):
        parts = urllib.parse.urlsplit(url)
        # Named in errors and logs: without the password.
        self.url = url if parts.password is None else url.replace(":" + parts.password + "@", "@", 1)
        self._https = parts.scheme == "https"
        self._address = (parts.hostname, parts.port)
        self._context = ssl_context
        self._path = parts.path or "/"
        self._headers = {"Content-Type": "text/xml", "User-Agent": "lockd_client"}
        user = user if user is not None else parts.username
        password = password if password is not None else parts.password
        if user is not None:
            credentials = "%s:%s" % (urllib.parse.unquote(user), urllib.parse.unquote(password or ""))
            basic = base64.b64encode(credentials.encode()).decode()
            self._headers["Authorization"] = "Basic " + basic
        self._idle = []
        self._idle_lock = threading.Lock()

    def _connection(self, timeout):
        """A kept-alive connection the server has not closed, or a new one."""
        with self._idle_lock:
            while self._idle:
                conn = self._idle.pop()
                # Readable while idle: the server closed it (its idle
                # timeout), and a request on it would be lost.
                if not select.select([conn.sock], [], [], 0)[0]:
                    return conn
                conn.close()
        host, port = self._address
        if self._https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise _NotSent(_describe(e, timeout)) from None
        return conn

    def post(self, body, timeout):
        """The body of the host's 200 answer to ``body``."""
        conn = self._connection(timeout)
        try:
            conn.sock.settimeout(timeout)
            conn.request("POST", self._path, body, self._headers)
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _Lost(_describe(e, timeout)) from None
        if answer.will_close:
            conn.close()
        else:
            with self._idle_lock:
                self._idle.append(conn)
        if answer.status == 503:
            raise _NotSent("HTTP 503 %s" % (answer.reason,))
        if answer.status != 200:
            raise ProtocolError(
                "%s answered HTTP %d %s, not XML-RPC" % (self.url, answer.status, answer.reason),
                self.url,
            )
        return data


def _describe(error, timeout):
    if isinstance(error, TimeoutError):
        return "no answer within %.3g s" % (timeout,)
    if isinstance(error, http.client.RemoteDisconnected):
        return "the connection was closed before an answer came"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _default_client():
    return "%s/%d" % (socket.gethostname(), os.getpid())


class Client:
    """lockd's methods on the hosts ``urls`` (a list, or a comma-separated
    string, of ``http://`` or ``https://`` URLs, ``user:password@`` in them
    allowed), which serve the same locks (one URL in directory mode).

    ``user`` and ``password`` authenticate every call (HTTP Basic);
    ``ssl_context`` is the ``ssl.SSLContext`` of https calls (the CA to
    trust, the client's certificate); ``timeout`` the seconds a host has to
    answer a call before the next host is asked (plus the wait of a waiting
    ``acquire``). Safe to share between threads.
    """

    def __init__(self, urls, *, user=None, password=None, ssl_context=None, timeout=10.0):
        self._hosts = [_Host(url, user, password, ssl_context) for url in _hosts(urls)]
        self._current = 0
        self.timeout = timeout

    @property
    def urls(self):
        """The hosts' URLs, in the order given (without passwords)."""
        return [host.url for host in self._hosts]

    @property
    def url(self):
        """The host a call goes to first: the one that answered last."""
        return self._hosts[self._current].url

    # gocept.lockd's methods.

    def lock(self, resource, client):
        """Locks ``resource`` for ``client``; AlreadyLocked if anyone holds it."""
        self.call("lock", resource, client)

    def unlock(self, resource, client):
        """Releases ``client``'s lock; NotLocked or NotOwner otherwise."""
        self.call("unlock", resource, client)

    # lockd's own.

    def acquire(self, resource, client=None, ttl=None, wait=None, reentrant=False):
        """Takes the lock for ``client`` (default: ``hostname/pid``), with a
        fencing token and, with ``ttl`` (seconds), a lease, waiting in line
        up to ``wait`` seconds; ``reentrant`` returns the caller's own lock
        if it holds it. Returns a Lock; AlreadyLocked, WaitTimedOut."""
        client = _default_client() if client is None else client
        options = {"request_id": secrets.token_hex(16)}
        if ttl is not None:
            options["ttl"] = ttl
        if wait:
            options["wait"] = wait
        if reentrant:
            options["reentrant"] = True
        asked = time.monotonic()
        info = self._call("lockd.acquire", [resource, client, options], wait=wait or 0)
        # A lease starts when a host grants it: after the first try was sent
        # (its retries are answered with the lock it took), or, for a
        # waiting acquire, shortly before the answer came.
        start = time.monotonic() if wait else asked
        return Lock(self, info, start)

    def hold(self, resource, client=None, ttl=15, wait=None, on_lost=None):
        """Takes the lock with a lease of ``ttl`` seconds, as ``acquire``,
        and renews it in a background thread until it is released. Use as
        ``with client.hold(...) as lock:``, which releases it at the end.
        If the lock is lost, ``lock.lost`` is set and ``on_lost(lock,
        reason)`` called once (from the renewing thread)."""
        if not ttl:
            raise ValueError("hold() keeps a lease alive: give it a ttl")
        lock = self.acquire(resource, client, ttl=ttl, wait=wait)
        lock._keep(on_lost, at_once=bool(wait))
        return lock

    def release(self, resource, client, token=None):
        """Releases ``client``'s lock (only the one with ``token``, if given)."""
        params = [resource, client] + ([] if token is None else [str(token)])
        self.call("lockd.release", *params)

    def renew(self, resource, client, ttl, token=None):
        """Makes ``client``'s lease run out ``ttl`` seconds from now; returns
        the lock as a dict."""
        params = [resource, client, ttl] + ([] if token is None else [str(token)])
        return self.call("lockd.renew", *params)

    def status(self, resource):
        """The lock on ``resource`` as a dict, or None if it is free."""
        return self.call("lockd.status", resource)

    def holder(self, resource):
        """The client holding ``resource``, or None."""
        lock = self.status(resource)
        return None if lock is None else lock["client"]

    def check(self, resource, token):
        """Whether ``token`` is the current holder's."""
        return self.call("lockd.check", resource, str(token))

    def list(self, prefix="", limit=None, after=None):
        """The locks held whose resource starts with ``prefix``, by
        resource: at most ``limit``, those sorting after ``after``."""
        options = {k: v for k, v in (("limit", limit), ("after", after)) if v is not None}
        return self.call("lockd.list", prefix, *([options] if options else []))

    def count(self, prefix=""):
        """How many locks are held whose resource starts with ``prefix``."""
        return self.call("lockd.list", prefix, {"count": True})

    def break_lock(self, resource, reason="broken through lockd_client"):
        """Removes the lock whoever holds it (for operators; ``reason`` goes
        to the daemon's audit log); returns the lock it was, or None if a
        lost answer's retry found it free."""
        return self.call("lockd.break_lock", resource, reason)

    def call(self, method, *params):
        """Any XML-RPC method (``system.listMethods``, say), with failover."""
        return self._call(method, list(params))

    # Failover.

    def _order(self):
        """The hosts, the one that answered last first."""
        i = self._current
        return self._hosts[i:] + self._hosts[:i]

    def _call(self, method, params, deadline=None, attempt=None, wait=0.0):
        """Calls ``method`` on the hosts by turns, each at most once, until
        one answers or ``deadline`` (time.monotonic()) passes; each try
        gets ``attempt`` seconds (the client's timeout) plus what is left of
        ``wait``."""
        waited_until = time.monotonic() + wait
        order = self._order()
        failures = []
        unknown = False
        while order:
            host = order.pop(0)
            if method == "lockd.acquire" and wait:
                left = max(0.0, waited_until - time.monotonic())
                params[2] = dict(params[2], wait=left)
            try:
                return self._send(host, method, params, deadline, attempt)
            except _NotSent as e:
                failures.append((host.url, str(e)))
            except _Lost as e:
                failures.append((host.url, str(e)))
                unknown = True
                if not _retried_anywhere(method, params):
                    return self._settle(method, params, order, failures, deadline)
        raise _failed(method, failures, unknown)

    def _send(self, host, method, params, deadline, attempt=None):
        """``method``'s value from ``host``, a LockError for its fault;
        _NotSent or _Lost when it did not answer."""
        timeout = (attempt or self.timeout) + _wait_of(method, params)
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise _NotSent("not tried: the call's time ran out")
        body = xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()
        data = host.post(body, timeout)
        try:
            (value,), _ = xmlrpc.client.loads(data)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == 7 and "did not happen" in fault.faultString:
                raise _NotSent(fault.faultString) from None
            if fault.faultCode == 7:
                raise _Lost(fault.faultString) from None
            self._current = self._hosts.index(host)
            raise from_fault(fault.faultCode, fault.faultString) from None
        except (xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError, ValueError):
            shown = data[:60].decode("utf-8", "replace")
            raise ProtocolError(
                "%s answered something that is not XML-RPC: %r" % (host.url, shown), host.url
            ) from None
        self._current = self._hosts.index(host)
        return value

    def _settle(self, method, params, order, failures, deadline):
        """After ``method`` was sent and its answer lost: asks another host
        who holds the lock, and returns or raises what the call would have,
        or sends it again to the host that said."""
        resource = params[0]
        while order:
            host = order[0]
            try:
                lock = self._send(host, "lockd.status", [resource], deadline)
            except (_NotSent, _Lost) as e:
                failures.append((host.url, "lockd.status: %s" % (e,)))
                order.pop(0)
                continue
            if not _again(method, params, lock, failures):
                return lock if method == "lockd.acquire" else None
            try:
                return self._send(host, method, params, deadline)
            except (_NotSent, _Lost) as e:
                failures.append((host.url, str(e)))
                order.pop(0)
        raise _failed(method, failures, True)


def _wait_of(method, params):
    """The seconds a call may wait in line (``lockd.acquire``'s ``wait``)."""
    if method != "lockd.acquire" or len(params) < 3:
        return 0.0
    return params[2].get("wait", 0.0)


def _again(method, params, lock, failures):
    """Whether ``method``, its answer lost, is to be sent again now that the
    lock is ``lock`` (lockd.status's answer); False when that answer is the
    call's outcome, which is then returned; raises what the daemon would
    have answered otherwise."""
    holder = None if lock is None else lock["client"]
    if method == "lockd.break_lock":
        if lock is None:
            return False
        raise _failed(method, failures, True, "the lock is held, maybe by a newer holder: not broken again")
    client = params[1]
    if method in ("lock", "lockd.acquire"):
        if holder is None:
            return True
        if holder == client:
            return False
        raise AlreadyLocked("Resource already locked by %r" % (holder,), holder)
    if method in ("unlock", "lockd.release"):
        token = params[2] if len(params) > 2 else None
        return holder == client and (token is None or str(lock["token"]) == str(token))
    raise _failed(method, failures, True)


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


class Lock:
    """A lock taken through a Client: ``resource``, ``client``, ``token``
    (the fencing token: hand it to what the lock protects, which must
    refuse writers with an older one), ``acquired`` and ``expires`` (the
    daemon's times, seconds since the epoch; ``expires`` None without a
    lease) and ``ttl``.

    ``lost`` is set when the lock is found lost (broken by an operator, its
    lease run out with no host renewing it, a renewal refused);
    ``lost_reason`` says why. A ``with`` block releases the lock at its end
    (a lost lock quietly).
    """

    def __init__(self, lockd, info, start):
        self._lockd = lockd
        self.resource = info["resource"]
        self.client = info["client"]
        self.token = info["token"]
        self.acquired = info["acquired"]
        self.expires = info["expires"]
        self.ttl = info["ttl"]
        self.lost = threading.Event()
        self.lost_reason = None
        self._on_lost = None
        self._state = threading.Lock()
        self._released = False
        self._stop = threading.Event()
        # Where this client counts the lease to end, on its monotonic clock:
        # never after the host's end, since it counts from before it asked.
        self._lease_end = None if self.ttl is None else start + self.ttl

    def __repr__(self):
        return "<Lock %r held by %r, token %d%s>" % (
            self.resource,
            self.client,
            self.token,
            ", lost" if self.lost.is_set() else "",
        )

    def renew(self, ttl=None):
        """Makes the lease run out ``ttl`` (default: the lease's length)
        seconds from now; a refusal (the lock is lost) sets ``lost``."""
        ttl = ttl or self.ttl
        if ttl is None:
            raise ValueError("%r was taken without a lease: give renew a ttl" % (self.resource,))
        self._renew(ttl)
        return self

    def release(self):
        """Stops renewing the lock and releases it (only this one, by its
        token)."""
        with self._state:
            self._released = True
        self._stop.set()
        self._lockd.release(self.resource, self.client, self.token)

    def check(self):
        """Whether the lock is still this one (its token the holder's)."""
        return self._lockd.check(self.resource, self.token)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.release()
        except _GONE as e:
            log.info("%s: not released, the lock was not %s's any more: %s", self.resource, self.client, e)
        except LockError as e:
            if exc_type is None and not self.lost.is_set():
                raise
            log.warning("%s: not released: %s", self.resource, e)
        return False

    def _renew(self, ttl, deadline=None, attempt=None):
        asked = time.monotonic()
        params = [self.resource, self.client, ttl, str(self.token)]
        try:
            info = self._lockd._call("lockd.renew", params, deadline, attempt)
        except _GONE as e:
            self._lose(str(e))
            raise
        except LockError:
            # It may have landed: a shorter ttl may have shortened the lease.
            with self._state:
                if self._lease_end is not None:
                    self._lease_end = min(self._lease_end, asked + ttl)
            raise
        with self._state:
            self.expires = info["expires"]
            self.ttl = info["ttl"]
            self._lease_end = asked + ttl

    def _keep(self, on_lost, at_once):
        """Renews the lease in a daemon thread every third of it (at once
        first, if ``at_once``), until released or lost."""
        self._on_lost = on_lost
        thread = threading.Thread(
            target=self._keep_alive, args=(at_once,), name="lockd renew %s" % (self.resource,), daemon=True
        )
        thread.start()

    def _keep_alive(self, at_once):
        ttl = self.ttl
        period = ttl / 3
        # Lost is declared this long before the lease ends, so that the
        # holder stops while the lock is still its own.
        margin = ttl / 10
        renew_at = time.monotonic() + (0 if at_once else period)
        while not self._stop.wait(max(0.0, renew_at - time.monotonic())):
            asked = time.monotonic()
            deadline = self._lease_end - margin
            try:
                self._renew(ttl, deadline, min(period, self._lockd.timeout))
            except _GONE:
                return
            except LockError as e:
                if time.monotonic() >= deadline:
                    self._lose("the lease ran out: no lockd host renewed it in time (%s)" % (e,))
                    return
                log.warning("%s: renewal failed, trying again: %s", self.resource, e)
                renew_at = time.monotonic() + min(period / 4, 1.0)
                continue
            renew_at = asked + period

    def _lose(self, reason):
        with self._state:
            if self._released or self.lost.is_set():
                return
            self.lost_reason = reason
            self.lost.set()
        self._stop.set()
        log.warning("%s: lock lost: %s", self.resource, reason)
        if self._on_lost is not None:
            try:
                self._on_lost(self, reason)
            except Exception:
                log.exception("%s: on_lost failed", self.resource)
