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

Failover (the rules of docs/clients.md, as the ``lockd`` command line
follows them): a call goes to the host that answered last and moves on to
the next when a host cannot be reached, answers lockd's own HTTP 503 (too
many connections) or fault 7 "the change did not happen": nothing happened
there. When a request may have been carried out and no answer came (the
try's time ran out, the connection was cut, HTTP 502 or 504 or another 503
from something in front of lockd, fault 7 "the outcome is unknown"), reads,
``lockd.acquire`` with its ``request_id`` and ``lockd.renew`` (which only
ever changes the caller's own lease) are sent to the next host; ``lock``,
``unlock``, ``lockd.release`` and ``lockd.break_lock`` are first settled
by asking another host ``lockd.status``; any other call is
``OutcomeUnknown``. Each host is tried once per call, each try within one
deadline (its answer included). With one URL nothing is sent twice.
"""

import base64
import logging
import os
import secrets
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
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

# The most bytes an answer may have (its head included), as the command
# line's: more is not lockd.
MAX_ANSWER = 64 * 1024 * 1024

# Locks asked for per call by list() without a limit.
_PAGE = 1000

# Fault 7's text when the change surely did not happen (any other fault 7:
# the outcome is unknown).
_DID_NOT_HAPPEN = "Lock store unavailable: the change did not happen"


class Unavailable(StoreUnavailable):
    """No host carried the call out: each could not be reached, answered
    lockd's own HTTP 503 or fault 7 "did not happen", or ran out of time.
    ``failures`` lists (url, what happened) for each host tried."""

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class OutcomeUnknown(Unavailable):
    """A change that may have happened, or may yet: a host took the request
    and its answer never came, and no other host could settle it (with
    ``lock``: the lock is held under the caller's name, by this call or an
    earlier one; with ``break_lock``: the lock is held, maybe by a newer
    holder, and is left alone)."""


class ProtocolError(LockError):
    """A host answered something other than lockd's XML-RPC (HTTP 401, 404,
    an HTML page, an answer of the wrong type or over 64 MiB...), which
    another host would answer too: not retried."""

    code = None

    def __init__(self, message, url):
        super().__init__(message)
        self.url = url


class _NotSent(Exception):
    """The call surely did not happen on this host."""


class _Lost(Exception):
    """The call was sent to this host and may have happened: no answer
    came, or one that says so."""


class _Cut(Exception):
    """The connection ended before the whole answer came."""


class _Garbled(Exception):
    """What came back is not HTTP."""


class _TooBig(Exception):
    """The answer is over MAX_ANSWER."""


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


def _hosts(urls):
    if isinstance(urls, str):
        urls = urls.split(",")
    urls = [url.strip() for url in urls]
    if not urls:
        raise ValueError("no lockd URL given")
    seen = set()
    for url in urls:
        if not url:
            raise ValueError("an empty URL in the list of lockd hosts %r" % (",".join(urls),))
        if url in seen:
            raise ValueError("%r is named twice in the list of lockd hosts" % (url,))
        seen.add(url)
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


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_lock(value):
    """Whether ``value`` is a lock as lockd answers it."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("resource"), str)
        and isinstance(value.get("client"), str)
        and type(value.get("token")) is int
        and _is_number(value.get("acquired"))
        and (value.get("expires") is None or _is_number(value["expires"]))
        and (value.get("ttl") is None or _is_number(value["ttl"]))
    )


# What lockd answers to each of these calls.
_SHAPES = {
    "lockd.acquire": _is_lock,
    "lockd.renew": _is_lock,
    "lockd.status": lambda v: v is None or _is_lock(v),
    "lockd.break_lock": _is_lock,
    "lockd.check": lambda v: isinstance(v, bool),
    "lockd.list": lambda v: (type(v) is int) or (isinstance(v, list) and all(_is_lock(x) for x in v)),
}


class _Connection:
    """A connection to a host, and what it has read of an answer. Each
    read may take what is left of the try's time, no more, and an answer
    may have MAX_ANSWER bytes at most."""

    def __init__(self, sock):
        self.sock = sock
        self._buffer = bytearray()
        self._deadline = 0.0
        self._read = 0

    def close(self):
        self.sock.close()

    def reusable(self):
        """Whether the connection, idle since its last answer, may carry a
        request: nothing came on it since (the server closing it after its
        idle timeout would lose the request). Looks without waiting."""
        if self._buffer:
            return False
        try:
            self.sock.setblocking(False)
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.recv(1)  # handles TLS records such as session tickets
            else:
                self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        return False  # closed, or something came that no request asked for

    def _left(self):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the try's time ran out")
        return left

    def send(self, request, deadline):
        self.sock.settimeout(max(deadline - time.monotonic(), 1e-6))
        self.sock.sendall(request)

    def _fill(self):
        """Reads what comes next into the buffer; False at the end."""
        if self._read > MAX_ANSWER:
            raise _TooBig()
        self.sock.settimeout(self._left())
        chunk = self.sock.recv(65536)
        self._read += len(chunk)
        self._buffer += chunk
        return bool(chunk)

    def _line(self):
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line.rstrip(b"\r\n")
            if len(self._buffer) > 65536:
                raise _Garbled("a line of more than 64 KiB")
            if not self._fill():
                raise _Cut()

    def _exactly(self, n):
        while len(self._buffer) < n:
            if not self._fill():
                raise _Cut()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _to_end(self):
        while self._fill():
            pass
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def answer(self, deadline):
        """(status, reason, body, whether the connection may be kept) of
        the answer that comes by ``deadline``."""
        self._deadline = deadline
        self._read = len(self._buffer)
        while True:
            line = self._line()
            try:
                version, status, reason = (line.decode("latin-1").split(None, 2) + [""])[:3]
                status = int(status)
            except ValueError:
                raise _Garbled(repr(line[:60])) from None
            if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
                raise _Garbled(repr(line[:60]))
            headers = {}
            while True:
                line = self._line()
                if not line:
                    break
                name, colon, value = line.decode("latin-1").partition(":")
                if not colon or len(headers) > 100:
                    raise _Garbled("a malformed header %r" % (line[:60],))
                name = name.strip().lower()
                headers[name] = headers[name] + "," + value.strip() if name in headers else value.strip()
            if status >= 200:
                break
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        coding = headers.get("transfer-encoding", "").lower()
        if status in (204, 304):
            body = b""
        elif coding:
            if coding.split(",")[-1].strip() != "chunked":
                raise _Garbled("Transfer-Encoding %r" % (coding,))
            body = self._chunked()
        elif "content-length" in headers:
            lengths = {v.strip() for v in headers["content-length"].split(",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise _Garbled("Content-Length %r" % (headers["content-length"],))
            length = int(lengths.pop())
            if length > MAX_ANSWER:
                raise _TooBig()
            body = self._exactly(length)
        else:
            body, keep = self._to_end(), False
        return status, reason, body, keep

    def _chunked(self):
        body = bytearray()
        while True:
            size = self._line().split(b";")[0].strip()
            try:
                size = int(size, 16)
            except ValueError:
                raise _Garbled("a chunk size %r" % (size[:20],)) from None
            if size < 0 or len(body) + size > MAX_ANSWER:
                raise _TooBig()
            if size == 0:
                while self._line():  # trailers
                    pass
                return bytes(body)
            body += self._exactly(size)
            if self._line():
                raise _Garbled("no CRLF after a chunk")


class _Host:
    """One lockd host: its URL and the kept-alive connections to it that no
    call is using now."""

    def __init__(self, url, user, password, ssl_context):
        parts = urllib.parse.urlsplit(url)
        # Named in errors and logs: without the password.
        self.url = url if parts.password is None else url.replace(":" + parts.password + "@", "@", 1)
        self._https = parts.scheme == "https"
        self._name = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._context = ssl_context
        if self._https and ssl_context is None:
            self._context = ssl.create_default_context()
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        headers = [
            ("Host", parts.netloc.rpartition("@")[2]),
            ("User-Agent", "lockd_client"),
            ("Content-Type", "text/xml"),
        ]
        user = user if user is not None else parts.username
        password = password if password is not None else parts.password
        if user is not None:
            credentials = "%s:%s" % (urllib.parse.unquote(user), urllib.parse.unquote(password or ""))
            headers.append(("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode()))
        self._head = "POST %s HTTP/1.1\r\n%s" % (path, "".join("%s: %s\r\n" % h for h in headers))
        self._idle = []
        self._idle_lock = threading.Lock()

    def _addresses(self, deadline):
        """The host's addresses, the name resolved within the try's time
        (in a thread of its own, as getaddrinfo takes no timeout)."""
        try:
            return socket.getaddrinfo(
                self._name, self._port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except (socket.gaierror, UnicodeError):
            pass
        found = []
        done = threading.Event()

        def resolve():
            try:
                found.append(socket.getaddrinfo(self._name, self._port, type=socket.SOCK_STREAM))
            except (OSError, UnicodeError) as e:
                found.append(e)
            finally:
                done.set()

        try:
            threading.Thread(target=resolve, name="lockd resolve %s" % (self._name,), daemon=True).start()
        except RuntimeError as e:
            raise _NotSent("%s not resolved: %s" % (self._name, e)) from None
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise _NotSent("%s not resolved within the try's time" % (self._name,))
        if isinstance(found[0], Exception):
            raise _NotSent("%s not resolved: %s" % (self._name, _describe(found[0])))
        return found[0]

    def _connect(self, deadline):
        """A new connection (TLS handshake done) by ``deadline``."""
        said = "no address"
        for family, kind, proto, _, address in self._addresses(deadline):
            left = deadline - time.monotonic()
            if left <= 0:
                said = "no connection within the try's time"
                break
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(left)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._https:
                    sock = self._handshake(sock, deadline)
                return _Connection(sock)
            except TimeoutError:
                sock.close()
                said = "no connection within the try's time"
            except OSError as e:
                sock.close()
                said = _describe(e)
        raise _NotSent(said)

    def _handshake(self, sock, deadline):
        tls = self._context.wrap_socket(sock, server_hostname=self._name, do_handshake_on_connect=False)
        try:
            tls.setblocking(False)
            with selectors.DefaultSelector() as selector:
                while True:
                    try:
                        tls.do_handshake()
                        return tls
                    except ssl.SSLWantReadError:
                        event = selectors.EVENT_READ
                    except ssl.SSLWantWriteError:
                        event = selectors.EVENT_WRITE
                    left = deadline - time.monotonic()
                    selector.register(tls, event)
                    ready = left > 0 and selector.select(left)
                    selector.unregister(tls)
                    if not ready:
                        raise TimeoutError("no TLS handshake within the try's time")
        except BaseException:
            tls.close()
            raise

    def _connection(self, deadline):
        """A kept-alive connection the server has not closed, or a new one."""
        with self._idle_lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable():
                    return conn
                conn.close()
        return self._connect(deadline)

    def post(self, body, deadline):
        """The body of the host's 200 answer to ``body``, all of it by
        ``deadline`` (time.monotonic())."""
        began = time.monotonic()
        conn = self._connection(deadline)
        request = (self._head + "Content-Length: %d\r\n\r\n" % len(body)).encode("latin-1") + body
        try:
            conn.send(request, deadline)
        except OSError as e:
            # Not all of the request went out: it cannot have been carried out.
            conn.close()
            said = "not within the try's time" if isinstance(e, TimeoutError) else _describe(e)
            raise _NotSent("the request could not be sent: %s" % (said,)) from None
        try:
            status, reason, data, keep = conn.answer(deadline)
        except _TooBig:
            conn.close()
            said = "%s answered more than %d bytes: not lockd" % (self.url, MAX_ANSWER)
            raise ProtocolError(said, self.url) from None
        except _Garbled as e:
            conn.close()
            said = "%s answered something that is not HTTP: %s" % (self.url, e)
            raise ProtocolError(said, self.url) from None
        except _Cut:
            conn.close()
            raise _Lost("the connection was closed before the whole answer came") from None
        except OSError as e:
            conn.close()
            raise _Lost(_describe(e, deadline - began)) from None
        if keep:
            with self._idle_lock:
                self._idle.append(conn)
        else:
            conn.close()
        if status == 200:
            return data
        said = "HTTP %d %s" % (status, reason)
        text = data[:200].decode("utf-8", "replace").strip()
        if status == 503 and data.startswith(b"lockd has ") and b"(--max-connections)" in data:
            raise _NotSent("%s: %s" % (said, text))
        if status in (502, 503, 504):
            # Something in front of lockd: the request may have reached it.
            raise _Lost("%s%s" % (said, ": " + text[:80] if text else ""))
        raise ProtocolError("%s answered %s, not XML-RPC" % (self.url, said), self.url)


def _describe(error, took=None):
    if isinstance(error, TimeoutError) and took is not None:
        return "no answer within %.3g s" % (took,)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _default_client():
    return "%s/%d" % (socket.gethostname(), os.getpid())


class Client:
    """lockd's methods on the hosts ``urls`` (a list, or a comma-separated
    string, of ``http://`` or ``https://`` URLs, ``user:password@`` in them
    allowed; none named twice), which serve the same locks (one URL in
    directory mode).

    ``user`` and ``password`` authenticate every call (HTTP Basic);
    ``ssl_context`` is the ``ssl.SSLContext`` of https calls (the CA to
    trust, the client's certificate); ``timeout`` the seconds a host has to
    answer a call, name resolution and connection included, before the
    next host is asked (plus the wait of a waiting ``acquire``): 30 as the
    command line's ``--timeout``. Safe to share between threads.
    """

    def __init__(self, urls, *, user=None, password=None, ssl_context=None, timeout=30.0):
        if not _is_number(timeout) or not timeout > 0:
            raise ValueError("timeout must be a number of seconds above 0, not %r" % (timeout,))
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
        """Locks ``resource`` for ``client``; AlreadyLocked if anyone holds
        it, the client itself included."""
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
        # The lease is counted from when the first try was sent: a host
        # granted it after that, maybe long after (a host that did not
        # answer, a wait in line), never before.
        asked = time.monotonic()
        info = self._call("lockd.acquire", [resource, client, options], wait=wait or 0)
        return Lock(self, info, asked)

    def hold(self, resource, client=None, ttl=15, wait=None, on_lost=None):
        """Takes the lock with a lease of ``ttl`` seconds, as ``acquire``,
        and renews it in a background thread until it is released. Use as
        ``with client.hold(...) as lock:``, which releases it at the end.
        If taking it left less than two thirds of the lease (counted from
        when it was asked for), it is renewed before hold() returns. If the
        lock is lost, ``lock.lost`` is set and ``on_lost(lock, reason)``
        called once (from the renewing thread)."""
        if not ttl:
            raise ValueError("hold() keeps a lease alive: give it a ttl")
        lock = self.acquire(resource, client, ttl=ttl, wait=wait)
        lock._keep(on_lost, ttl)
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
        resource: at most ``limit``, those sorting after ``after``. Without
        a limit, all of them, asked for by pages of 1,000."""
        if limit is not None:
            options = {"limit": limit} if after is None else {"limit": limit, "after": after}
            return self.call("lockd.list", prefix, options)
        locks = []
        while True:
            options = {"limit": _PAGE} if after is None else {"limit": _PAGE, "after": after}
            page = self.call("lockd.list", prefix, options)
            locks += page
            if len(page) < _PAGE:
                return locks
            after = page[-1]["resource"]

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

    def _try_deadline(self, method, params, deadline, attempt, halve):
        """When a try starting now must be over: ``attempt`` seconds (the
        client's timeout) plus what is left of an acquire's wait, within
        ``deadline``, and with ``halve`` (another host could be tried
        after it) within half of what is left until it, so that the next
        host has time too. None if none is left."""
        now = time.monotonic()
        timeout = (attempt or self.timeout) + _wait_of(method, params)
        if deadline is not None:
            left = deadline - now
            if left <= 0:
                return None
            timeout = min(timeout, left / 2 if halve else left)
        return now + timeout

    def _call(self, method, params, deadline=None, attempt=None, wait=0.0, halve=False):
        """Calls ``method`` on the hosts by turns, each at most once, until
        one answers or ``deadline`` (time.monotonic()) passes; each try
        gets ``attempt`` seconds (the client's timeout) plus what is left of
        ``wait``, with ``halve`` at most half of what is left until
        ``deadline`` while another host could be tried."""
        waited_until = time.monotonic() + wait
        order = self._order()
        failures = []
        # Whether a try may have changed something and its answer did not come.
        uncertain = False
        while order:
            host = order.pop(0)
            if method == "lockd.acquire" and wait:
                params[2] = dict(params[2], wait=max(0.0, waited_until - time.monotonic()))
            until = self._try_deadline(method, params, deadline, attempt, halve and bool(order))
            if until is None:
                failures.append((host.url, "not tried: the call's time ran out"))
                break
            try:
                return self._send(host, method, params, until)
            except _NotSent as e:
                failures.append((host.url, str(e)))
            except _Lost as e:
                failures.append((host.url, str(e)))
                kind = _kind(method, params)
                if kind == _AGAIN:
                    uncertain = True
                    continue
                if kind == _UNKNOWN or not order:
                    raise _failed(method, failures, True)
                return self._settle(method, params, order, failures, deadline)
            except ProtocolError as e:
                # After a try of a change that may have happened, that is
                # what the caller must know.
                if not uncertain or _is_read(method, params):
                    raise
                failures.append((host.url, str(e)))
                raise _failed(method, failures, True) from None
        raise _failed(method, failures, uncertain)

    def _send(self, host, method, params, until):
        """``method``'s value from ``host``, a LockError for its fault;
        _NotSent or _Lost when it did not answer by ``until``."""
        body = xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()
        data = host.post(body, until)
        try:
            (value,), _ = xmlrpc.client.loads(data)
        except xmlrpc.client.Fault as fault:
            code, text = fault.faultCode, fault.faultString
            if type(code) is not int or not isinstance(text, str):
                said = "%s answered a malformed fault: %r" % (host.url, data[:80])
                raise ProtocolError(said, host.url) from None
            if code == 7 and text.startswith(_DID_NOT_HAPPEN):
                raise _NotSent(text) from None
            if code == 7:
                raise _Lost(text) from None
            self._current = self._hosts.index(host)
            raise from_fault(code, text) from None
        except Exception:
            shown = data[:60].decode("utf-8", "replace")
            raise ProtocolError(
                "%s answered something that is not XML-RPC: %r" % (host.url, shown), host.url
            ) from None
        shape = _SHAPES.get(method)
        if shape is not None and not shape(value):
            raise ProtocolError(
                "%s answered %s with %.80r, not what lockd answers" % (host.url, method, value), host.url
            )
        self._current = self._hosts.index(host)
        return value

    def _status(self, host, resource, deadline):
        """lockd.status of ``resource`` from ``host``."""
        until = self._try_deadline("lockd.status", [resource], deadline, None, False)
        if until is None:
            raise _NotSent("not tried: the call's time ran out")
        return self._send(host, "lockd.status", [resource], until)

    def _settle(self, method, params, order, failures, deadline):
        """After ``method`` was sent and its answer lost: asks the other
        hosts (``order``) who holds the lock, and returns or raises what the
        call would have, or sends it again to the host that said. Every
        error is OutcomeUnknown, as the first try may have happened."""
        resource = params[0]
        while order:
            host = order[0]
            try:
                lock = self._status(host, resource, deadline)
            except (_NotSent, _Lost) as e:
                failures.append((host.url, "lockd.status: %s" % (e,)))
                order.pop(0)
                continue
            except LockError as e:
                failures.append((host.url, "lockd.status: %s" % (e,)))
                raise _failed(method, failures, True) from None
            if not _again(method, params, lock, failures):
                return None
            until = self._try_deadline(method, params, deadline, None, False)
            if until is None:
                failures.append((host.url, "not tried again: the call's time ran out"))
                break
            try:
                return self._send(host, method, params, until)
            except (_NotSent, _Lost) as e:
                failures.append((host.url, str(e)))
                order.pop(0)
            except ProtocolError as e:
                failures.append((host.url, str(e)))
                raise _failed(method, failures, True) from None
            except LockError as fault:
                return self._answered_again(host, method, params, fault, failures, deadline)
        raise _failed(method, failures, True)

    def _answered_again(self, host, method, params, fault, failures, deadline):
        """``method``, sent again after an earlier try may have happened,
        was answered ``fault``: the earlier try's outcome, if it explains
        the fault, else the fault."""
        if method in ("unlock", "lockd.release") and fault.code in (2, 3, 5):
            # The earlier try released it, or it is not the caller's now.
            return None
        if method in ("lock", "lockd.acquire") and fault.code == 1:
            try:
                lock = self._status(host, params[0], deadline)
            except (_NotSent, _Lost, LockError) as e:
                failures.append((host.url, "%s; lockd.status: %s" % (fault, e)))
                raise _failed(method, failures, True) from None
            if lock is not None and lock["client"] == params[1]:
                raise _held_by_caller(method, params, lock, failures)
        raise fault


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


class _Released(Exception):
    """The lock was released while a renewal waited to try again."""


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
        # never after the host's end, as it counts from when it first asked.
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

    def _renew(self, ttl, deadline=None, halve=False):
        asked = time.monotonic()
        params = [self.resource, self.client, ttl, str(self.token)]
        try:
            info = self._lockd._call("lockd.renew", params, deadline, None, halve=halve)
        except _GONE as e:
            self._lose(str(e))
            raise
        except Exception:
            # It may have landed: a shorter ttl may have shortened the lease.
            with self._state:
                if self._lease_end is not None:
                    self._lease_end = min(self._lease_end, asked + ttl)
            raise
        with self._state:
            self.expires = info["expires"]
            self.ttl = info["ttl"] if info["ttl"] is not None else ttl
            self._lease_end = asked + min(ttl, self.ttl)

    def _renew_until(self, ttl, deadline, retry):
        """Renews the lease, each try of a host within half of what is left
        until ``deadline``, trying again every ``retry`` seconds after a
        failure; returns when it set out on the renewal that succeeded.
        Raises a refusal at once, the last failure at ``deadline``, and
        _Released if the lock is released meanwhile. Any error is a failed
        renewal: a host answering nonsense must not end the renewals."""
        failed = None
        while True:
            asked = time.monotonic()
            if failed is not None and asked >= deadline:
                raise failed
            try:
                self._renew(ttl, deadline, halve=True)
                return asked
            except _GONE:
                raise
            except Exception as e:
                failed = e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                log.warning("%s: renewal failed, trying again: %s", self.resource, e)
                if self._stop.wait(min(retry, left)):
                    raise _Released() from None

    def _keep(self, on_lost, ttl):
        """Renews the lease in a daemon thread every third of it, until
        released or lost. If less than two thirds of it are left (it is
        counted from when the acquire was first sent), renews it first
        here: a renewal with the token proves the lock is still this one;
        raises if none does."""
        ttl = self.ttl if self.ttl is not None else ttl
        period = ttl / 3
        if self._lease_end is None or self._lease_end - time.monotonic() < 2 * period:
            if self._lease_end is None:
                self._lease_end = time.monotonic()
            deadline = max(self._lease_end - ttl / 10, time.monotonic() + period)
            self._renew_until(ttl, deadline, min(period / 4, 1.0))
        self._on_lost = on_lost
        renew_at = self._lease_end - ttl + period
        thread = threading.Thread(
            target=self._keep_alive,
            args=(ttl, renew_at),
            name="lockd renew %s" % (self.resource,),
            daemon=True,
        )
        thread.start()

    def _keep_alive(self, ttl, renew_at):
        period = ttl / 3
        # Lost is declared this long before the lease ends, so that the
        # holder stops while the lock is still its own.
        margin = ttl / 10
        while not self._stop.wait(max(0.0, renew_at - time.monotonic())):
            try:
                renew_at = self._renew_until(ttl, self._lease_end - margin, min(period / 4, 1.0)) + period
            except (_Released, *_GONE):
                return
            except Exception as e:
                self._lose("the lease ran out: no lockd host renewed it in time (%s)" % (e,))
                return

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
