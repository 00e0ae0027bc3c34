"""lockd's own methods (lockd.*) through Python's xmlrpc.client.

Usage: fencing.py URL[,URL...] SCENARIO. Each scenario asserts what the
daemon answers and exits non-zero on the first mismatch. The daemon is
expected to run with the lock-delay the scenario names (see
tests/integration/fencing.rs). With several URLs (lockd hosts sharing one
cluster), each new proxy talks to the next host in turn.
"""
import itertools
import sys
import threading
import time
import urllib.request
import xmlrpc.client

URLS = sys.argv[1].split(",")
NEXT = itertools.cycle(URLS)


def proxy():
    return xmlrpc.client.ServerProxy(next(NEXT), allow_none=True)


def wait_until(what, event):
    """Waits for `event()` to be true, looking every 10 ms, for a minute
    at most."""
    deadline = time.monotonic() + 60
    while not event():
        assert time.monotonic() < deadline, "waited a minute for " + what
        time.sleep(0.01)


def waiters():
    """How many clients wait in line for locks now (lockd_waiters, summed
    over the hosts)."""
    return sum(waiters_on(url) for url in URLS)


def waiters_on(url):
    with urllib.request.urlopen(url.rstrip("/") + "/metrics") as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("lockd_waiters "):
                return int(float(line.split()[1]))
    raise AssertionError("no lockd_waiters in /metrics")


def fault_of(call, *args):
    try:
        call(*args)
    except xmlrpc.client.Fault as fault:
        return fault.faultCode, fault.faultString
    raise AssertionError("no fault from %r%r" % (call, args))


def methods():
    s = proxy()
    lock = s.lockd.acquire("vm/1", "host-a")
    assert lock["resource"] == "vm/1" and lock["client"] == "host-a", lock
    assert isinstance(lock["token"], int) and lock["token"] > 0, lock
    assert abs(lock["acquired"] - time.time()) < 5, lock
    assert lock["expires"] is None and lock["ttl"] is None, lock
    token = lock["token"]
    assert s.lockd.status("vm/1") == lock
    assert s.lockd.status("vm/2") is None
    # Tokens are accepted back as ints and as strings (Python cannot send i8).
    assert s.lockd.check("vm/1", token) is True
    assert s.lockd.check("vm/1", str(token)) is True
    assert s.lockd.check("vm/1", token + 1) is False
    assert s.lockd.check("other", token) is False
    # Held: others are refused, the holder too unless reentrant.
    assert fault_of(s.lockd.acquire, "vm/1", "host-b") == (
        1, "Resource already locked by 'host-a'")
    assert fault_of(s.lockd.acquire, "vm/1", "host-a")[0] == 1
    assert s.lockd.acquire("vm/1", "host-a", {"reentrant": True}) == lock
    assert fault_of(s.lock, "vm/1", "host-a")[0] == 1
    # list shows what acquire set, by prefix, sorted.
    second = s.lockd.acquire("vm/0", "host-b", {"ttl": 60})
    assert second["token"] > token, (second, token)
    assert second["ttl"] == 60.0 and abs(second["expires"] - second["acquired"] - 60) < 0.01
    other = s.lockd.acquire("disk/1", "host-c")
    assert [l["resource"] for l in s.lockd.list("vm/")] == ["vm/0", "vm/1"]
    assert s.lockd.list("vm/")[1] == lock
    assert [l["resource"] for l in s.lockd.list()] == ["disk/1", "vm/0", "vm/1"]
    assert s.lockd.list("nothing") == []
    # Release: only by the holder, only with the current token if one is given.
    assert fault_of(s.lockd.release, "vm/1", "host-b") == (
        3, "Resource locked by 'host-a' cannot be unlocked by 'host-b'")
    assert fault_of(s.lockd.release, "vm/1", "host-a", token + 1)[0] == 5
    assert s.lockd.release("vm/1", "host-a", str(token)) is None
    assert s.lockd.status("vm/1") is None
    assert s.lockd.check("vm/1", token) is False
    assert fault_of(s.lockd.release, "vm/1", "host-a") == (2, "Resource not locked")
    # A lock taken the gocept.lockd way has a token and shows in status.
    assert s.lock("vm/1", "host-d") is None
    plain = s.lockd.status("vm/1")
    assert plain["client"] == "host-d" and plain["token"] > other["token"], plain
    assert s.unlock("vm/1", "host-d") is None
    # renew gives a lock a lease, or a new end to its lease.
    renewed = s.lockd.renew("disk/1", "host-c", 30)
    assert renewed["token"] == other["token"] and renewed["ttl"] == 30.0, renewed
    assert fault_of(s.lockd.renew, "disk/1", "host-x", 30)[0] == 3
    assert fault_of(s.lockd.renew, "nothing", "host-x", 30)[0] == 2
    # Bad parameters get -32602 with what was expected.
    assert fault_of(s.lockd.acquire, "r", "c", {"ttl": "soon"})[0] == -32602
    assert fault_of(s.lockd.acquire, "r", "c", {"tll": 5})[0] == -32602
    assert fault_of(s.lockd.acquire, "r", "c", {"ttl": 0})[0] == -32602
    assert fault_of(s.lockd.check, "r", "12x")[0] == -32602
    assert fault_of(s.lockd.renew, "r", "c")[0] == -32602
    assert fault_of(s.lockd.acquire, "", "c")[0] == 4


def leases():
    """Run with --lock-delay 0.5."""
    s = proxy()
    lock = s.lockd.acquire("job", "worker-1", {"ttl": 0.4})
    renewed = s.lockd.renew("job", "worker-1", 0.8, lock["token"])
    assert renewed["expires"] > lock["expires"], (renewed, lock)
    wait_until("the lease to run out", lambda: s.lockd.status("job") is None)
    # Expired: nobody holds it, its token fails check, its holder is told.
    assert s.lockd.check("job", lock["token"]) is False
    assert fault_of(s.lockd.renew, "job", "worker-1", 1)[0] == 5
    assert fault_of(s.lockd.release, "job", "worker-1")[0] == 5
    # ... and it stays unavailable until the lock-delay after its end.
    code, message = fault_of(s.lockd.acquire, "job", "worker-2")
    assert code == 1 and "expired or was broken" in message, message
    taken = s.lockd.acquire("job", "worker-2", {"wait": 30})
    # (Times are whole milliseconds, sent as floating-point seconds.)
    assert taken["acquired"] >= renewed["expires"] + 0.499, (taken, renewed)
    assert taken["token"] > lock["token"], (taken, lock)
    assert fault_of(s.lockd.release, "job", "worker-1")[0] == 3


def waiting():
    """Run with --lock-delay 0."""
    s = proxy()
    s.lockd.acquire("queue", "holder")
    got = []
    lock = threading.Lock()

    def waiter(name):
        taken = proxy().lockd.acquire("queue", name, {"wait": 10})
        with lock:
            got.append((name, time.monotonic(), taken["token"]))
        time.sleep(0.05)
        proxy().lockd.release("queue", name)

    threads = []
    for n, name in enumerate(["w1", "w2", "w3"], start=1):
        t = threading.Thread(target=waiter, args=(name,))
        t.start()
        threads.append(t)
        # In line before the next one arrives.
        wait_until(name + " in line", lambda: waiters() == n)
    released = time.monotonic()
    s.lockd.release("queue", "holder")
    for t in threads:
        t.join()
    assert [name for name, _, _ in got] == ["w1", "w2", "w3"], got
    tokens = [token for _, _, token in got]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3, tokens
    print("first waiter served %.2f ms after the release" % ((got[0][1] - released) * 1000))
    # A wait that runs out is fault 6, once the time asked for has passed.
    s.lockd.acquire("queue", "holder")
    start = time.monotonic()
    code, _ = fault_of(proxy().lockd.acquire, "queue", "late", {"wait": 0.3})
    waited = time.monotonic() - start
    assert code == 6 and waited >= 0.3, (code, waited)
    # Waiting for a lease to run out works too.
    lease = s.lockd.acquire("lease", "short", {"ttl": 0.3})
    taken = proxy().lockd.acquire("lease", "next", {"wait": 30})
    assert taken["client"] == "next", taken
    assert taken["acquired"] >= lease["expires"] - 0.001, (taken, lease)


def breaking():
    """Run with --lock-delay 0.5."""
    s = proxy()
    lock = s.lockd.acquire("vm/7", "stuck-host")
    broken = s.lockd.break_lock("vm/7", "host stuck, fenced by hand")
    assert broken == lock, (broken, lock)
    assert s.lockd.check("vm/7", lock["token"]) is False
    assert s.lockd.status("vm/7") is None
    assert fault_of(s.lockd.release, "vm/7", "stuck-host")[0] == 5
    assert fault_of(s.lockd.acquire, "vm/7", "new-host")[0] == 1
    taken = s.lockd.acquire("vm/7", "new-host", {"wait": 30})
    assert taken["acquired"] >= broken["acquired"] + 0.499, (taken, broken)
    # The break used a token: the next holder's is above it.
    assert taken["token"] > lock["token"] + 1, (taken, lock)
    assert fault_of(s.lockd.break_lock, "free", "why")[0] == 2


SCENARIOS = {f.__name__: f for f in [methods, leases, waiting, breaking]}

if __name__ == "__main__":
    SCENARIOS[sys.argv[2]]()
    print("ok")
