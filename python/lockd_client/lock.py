"""``Lock``: a lock taken through a Client, its fencing token and lease;
``hold()``'s renewal thread, which renews the lease every third of it, each
renewal within a deadline before the lease ends, and sets ``lost`` (and
calls ``on_lost``) when the lock is found lost or no host renewed it in
time. Renewals go through the Client's ``_call``, as every call does.
"""

import logging
import threading
import time

from lockd_errors import LeaseExpired, LockError, NotLocked, NotOwner, StaleToken

log = logging.getLogger("lockd_client")

# The refusals that mean a lock is not the caller's any more.
_GONE = (NotLocked, NotOwner, LeaseExpired, StaleToken)


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
