"""``Client``: gocept.lockd's calls and lockd's own, each a method that
names its parameters and hands the call to failover; ``acquire`` and
``hold`` return a ``Lock``.
"""

import os
import secrets
import socket
import time

from .failover import _Failover, _hosts
from .http import _Host
from .lock import Lock
from .xmlrpc import _is_number

# Locks asked for per call by list() without a limit.
_PAGE = 1000


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
        hosts = [_Host(url, user, password, ssl_context) for url in _hosts(urls)]
        self._failover = _Failover(hosts, timeout)

    @property
    def timeout(self):
        """The seconds each try has (settable)."""
        return self._failover.timeout

    @timeout.setter
    def timeout(self, timeout):
        self._failover.timeout = timeout

    @property
    def urls(self):
        """The hosts' URLs, in the order given (without passwords)."""
        return self._failover.urls

    @property
    def url(self):
        """The host a call goes to first: the one that answered last."""
        return self._failover.url

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
        try:
            lock._keep(on_lost, ttl)
        except BaseException as e:
            # Taken, then not renewed in time: let go of it by its token, so
            # that a retry does not find its own lock in the way.
            try:
                lock.release()
            except Exception as why:
                e.add_note("not released either (its lease ends it): %s" % (why,))
            e.add_note("%s was taken (token %s), then lost before hold() returned" % (resource, lock.token))
            raise
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

    def _call(self, method, params, deadline=None, attempt=None, wait=0.0, halve=False):
        """``method`` with failover (see ``_Failover.call``): every call,
        a held lock's renewals included, goes through here."""
        return self._failover.call(method, params, deadline, attempt, wait, halve)
