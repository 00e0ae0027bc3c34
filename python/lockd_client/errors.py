"""The client's own errors, and the two outcomes of a try that the
transport and the protocol report to failover.

``Unavailable``, ``OutcomeUnknown`` and ``ProtocolError`` reach the caller;
``_NotSent`` and ``_Lost`` never do: failover turns them into the next
host, a settling ``lockd.status``, or one of the first two.
"""

from lockd_errors import LockError, StoreUnavailable


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

