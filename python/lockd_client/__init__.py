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

Layout, a call going down and its answer coming back up: ``client``
(``Client``'s methods) and ``lock`` (``Lock``, ``hold()``'s renewals) hand
each call to ``failover`` (the hosts, each try's deadline, ``outcomes``'
rules for a lost answer), which turns it into a body (``xmlrpc``), posts it
to a host (``http``, over a ``connection``) and decodes the answer; the
client's own errors are in ``errors``.
"""

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

from .client import Client
from .connection import MAX_ANSWER
from .errors import OutcomeUnknown, ProtocolError, Unavailable
from .lock import Lock

__all__ = ["Client", "Lock", "Unavailable", "OutcomeUnknown", "ProtocolError"] + lockd_errors.ERRORS

