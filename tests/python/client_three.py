"""hold() across three lockd hosts of one cluster, A, B and C, while the
first or the first two are paused (SIGSTOP; SIGCONT before the end).

Usage: client_three.py URL_A URL_B URL_C PID_A PID_B SCENARIO. Each
scenario asserts and exits non-zero on the first mismatch; it prints its
figures.
"""
import os
import signal
import sys
import time

from client_common import Recording, Watch, wait_until

A, B, C = sys.argv[1:4]
PID_A, PID_B = int(sys.argv[4]), int(sys.argv[5])


def resumed(pids, run):
    try:
        return run()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def first_paused():
    """A paused before hold(): the acquire's try on A runs out (4 s, longer
    than the lease of 3 s) and B takes the lock. The lease is counted from
    when the acquire was first sent, so hold() renews it before it returns,
    and the lock is kept, renewed on B, for more than two leases."""
    os.kill(PID_A, signal.SIGSTOP)

    def run():
        lockd = Recording([A, B, C], timeout=4)
        asked = time.monotonic()
        with lockd.hold("paused-first", client="host-a", ttl=3) as lock:
            returned = time.monotonic()
            watch = Watch(C, "paused-first")
            confirmed = lockd.renewals(B)
            assert confirmed and confirmed[0][2] <= returned, "no renewal before hold() returned"
            wait_until(
                "5 renewals on B, or lost",
                lambda: lock.lost.is_set() or len(lockd.renewals(B)) >= 5,
                30,
            )
            seen = watch.stop()
            assert not lock.lost.is_set(), lock.lost_reason
            assert lock.check()
        assert seen == {("host-a", lock.token)}, seen
        print(
            "A paused: hold(ttl=3) returned after %.3f s (timeout 4 s) and renewed at once on B; "
            "%d renewals since, lock kept" % (returned - asked, len(lockd.renewals(B)) - 1)
        )

    resumed([PID_A], run)


def two_paused():
    """hold(ttl=6) renewing on A, with the default timeout (30 s); A and B
    paused: each renewal gives a host at most half of what is left of its
    time, so C renews it, and the lock is kept for more than a lease."""
    lockd = Recording([A, B, C])
    with lockd.hold("two-paused", client="host-a", ttl=6) as lock:
        watch = Watch(C, "two-paused")
        wait_until("a renewal on A", lambda: lockd.renewals(A))
        stopped = time.monotonic()
        os.kill(PID_A, signal.SIGSTOP)
        os.kill(PID_B, signal.SIGSTOP)

        def run():
            wait_until(
                "3 renewals on C, or lost",
                lambda: lock.lost.is_set() or len(lockd.renewals(C, since=stopped)) >= 3,
                30,
            )
            held = time.monotonic() - stopped
            seen = watch.stop()
            assert not lock.lost.is_set(), lock.lost_reason
            assert lock.check()
            return held, seen

        held, seen = resumed([PID_A, PID_B], run)
        moved = lockd.renewals(C, since=stopped)[0]
    assert held > 6, held
    assert seen == {("host-a", lock.token)}, seen
    print(
        "A and B paused: the next renewal reached C %.3f s after they stopped (it took %.3f s); "
        "the lock kept for %.1f s, more than its lease of 6 s"
        % (moved[2] - stopped, moved[2] - moved[1], held)
    )


{"first_paused": first_paused, "two_paused": two_paused}[sys.argv[6]]()
