"""Locks held with lockd_client's hold(): kept alive, and reported lost.

Usage: client_hold.py URL[,URL...] SCENARIO [PID,...]. Each scenario
asserts and exits non-zero on the first mismatch; it prints its figures.
`paused` SIGSTOPs the lockd processes PID,... (every host) and SIGCONTs
them before it ends.
"""
import os
import signal
import sys
import time

from client_common import Recording, Watch
from lockd_client import Client

URLS = sys.argv[1]


def renews():
    """A lease of 2 s held for 7 s: renewed every third of it, the same
    lock (client, token) all along as any host tells, released at the end."""
    lockd = Recording(URLS)
    with lockd.hold("vm-42", client="host-a", ttl=2) as lock:
        token = lock.token
        watch = Watch(URLS, "vm-42")
        started = time.monotonic()
        time.sleep(7)  # what is tested: time passing while the lock is held
        seen = watch.stop()
        held = time.monotonic() - started
        assert not lock.lost.is_set(), lock.lost_reason
        assert lock.token == token and lock.check()
    assert seen == {("host-a", token)} and watch.polls > 50, (seen, watch.polls)
    assert Client(URLS).status("vm-42") is None
    renewals = len(lockd.renewals(since=started))
    assert renewals >= 9, renewals
    print("%d renewals in %.1f s: %.2f calls/s for a lock of ttl 2 s" % (renewals, held, renewals / held))


def broken():
    """An operator's break_lock: `lost` within one renewal period (1 s),
    on_lost called once, and the end of the block does not raise."""
    lost = []
    lockd = Client(URLS)
    with lockd.hold("vm-42", client="host-a", ttl=3, on_lost=lambda *a: lost.append(a)) as lock:
        broke = time.monotonic()
        Client(URLS).break_lock("vm-42", "test: host-a is presumed dead")
        assert lock.lost.wait(60)
        took = time.monotonic() - broke
        assert took < 1.0 + 0.5, took
        assert "Lease expired" in lock.lost_reason, lock.lost_reason
        assert not lock.check()
    assert lost == [(lock, lock.lost_reason)], lost
    print("lost %.3f s after break_lock (renewal period 1 s): %s" % (took, lock.lost_reason))


def paused():
    """Every host paused: `lost` before the lease ends, saying it ran out."""
    pids = [int(pid) for pid in sys.argv[3].split(",")]
    lockd = Recording(URLS, timeout=5)
    with lockd.hold("vm-42", client="host-a", ttl=2) as lock:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            assert lock.lost.wait(60)
            lost_at = time.monotonic()
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        # The lease runs from the last acquire or renewal that succeeded.
        last = max(c[1] for c in lockd.calls if c[4] is None)
        left = last + 2 - lost_at
        assert left > 0, "lost %.3f s after the lease ended" % -left
        assert lock.lost_reason.startswith("the lease ran out"), lock.lost_reason
    print(
        "lost %.3f s after every host was paused, %.3f s before the lease ended: %s"
        % (lost_at - stopped, left, lock.lost_reason)
    )


{"renews": renews, "broken": broken, "paused": paused}[sys.argv[2]]()
