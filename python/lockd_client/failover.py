"""Failover across the hosts of a call: the list of hosts, which one is
asked first (the one that answered last), each try's deadline, each host
tried once, and a lost answer followed as ``outcomes`` rules: the next
host, or ``lockd.status`` asked of another host first. A request goes down
from here (``xmlrpc`` to a body, ``http`` to a host) and its answer comes
back up as a value or an exception.
"""

import time
import urllib.parse

from lockd_errors import LockError

from . import xmlrpc
from .errors import ProtocolError, _Lost, _NotSent
from .outcomes import (
    _AGAIN,
    _UNKNOWN,
    _again,
    _failed,
    _held_by_caller,
    _is_read,
    _kind,
    _wait_of,
)


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


class _Failover:
    """The hosts of a Client, the one that answered last, and ``timeout``:
    the seconds each try has (the Client's). Safe to share between threads."""

    def __init__(self, hosts, timeout):
        self._hosts = hosts
        self._current = 0
        self.timeout = timeout

    @property
    def urls(self):
        return [host.url for host in self._hosts]

    @property
    def url(self):
        return self._hosts[self._current].url

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

    def call(self, method, params, deadline=None, attempt=None, wait=0.0, halve=False):
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
        _NotSent or _Lost when it did not answer by ``until``. A host that
        answered, with a value or a fault, is the one asked first next."""
        data = host.post(xmlrpc.encode(method, params), until)
        try:
            value = xmlrpc.decode(method, data, host.url)
        except ProtocolError:
            raise
        except LockError:
            self._current = self._hosts.index(host)
            raise
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
