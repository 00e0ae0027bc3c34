"""lockd_client against hosts that misbehave: fake hosts in this process,
alone or before a real lockd host.

Usage: client_hostile.py URL SCENARIO (URL a lockd host, in directory
mode). Each scenario asserts and exits non-zero on the first mismatch; it
prints what it saw.
"""
import os
import resource
import socket
import sys
import threading
import time
import xmlrpc.client

from client_common import Recording, wait_until
from lockd_client import AlreadyLocked, Client, LeaseExpired, OutcomeUnknown, Unavailable

URL = sys.argv[1]


class FakeHost:
    """An HTTP server on 127.0.0.1 answering each XML-RPC call as
    `answer(method, params)` says, connections kept alive:
    ("value", v), ("fault", code, text), ("http", status, reason, body),
    ("dribble", v) (the answer one byte every 0.2 s), ("cut",) (closes the
    connection, the request read and not carried out), ("swallow", url)
    (carries it out on the lockd host at url, then closes the connection).
    `calls` lists the methods asked for."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/" % self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            conn, _ = self._listener.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(data) < length:
                    data += conn.recv(65536)
                body, data = data[:length], data[length:]
                params, method = xmlrpc.client.loads(body)
                self.calls.append(method)
                action = self.answer(method, params)
                what = action[0]
                if what == "cut":
                    return
                if what == "swallow":
                    try:
                        getattr(xmlrpc.client.ServerProxy(action[1], allow_none=True), method)(*params)
                    except xmlrpc.client.Fault:
                        pass
                    return
                if what == "http":
                    _, status, reason, page = action
                    conn.sendall(
                        b"HTTP/1.1 %d %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                        % (status, reason.encode(), len(page), page)
                    )
                    continue
                if what == "fault":
                    xml = xmlrpc.client.dumps(xmlrpc.client.Fault(action[1], action[2]), methodresponse=True)
                else:
                    xml = xmlrpc.client.dumps((action[1],), methodresponse=True, allow_none=True)
                xml = xml.encode()
                if what == "dribble":
                    xml += b" " * 100000  # never all of it, in the time of a test
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
                answer = head % len(xml) + xml
                if what != "dribble":
                    conn.sendall(answer)
                    continue
                try:
                    for i in range(len(answer)):
                        conn.sendall(answer[i : i + 1])
                        time.sleep(0.2)  # the pace of a host that dribbles, not an ordering
                except OSError:
                    return


def fake_lock(resource, client, ttl=None):
    now = time.time()
    return {
        "resource": resource,
        "client": client,
        "token": 7,
        "acquired": now,
        "expires": None if ttl is None else now + ttl,
        "ttl": None if ttl is None else float(ttl),
    }


def granting(renewal):
    """A fake host that grants every lockd.acquire and answers lockd.renew
    with `renewal`."""

    def answer(method, params):
        if method == "lockd.acquire":
            return ("value", fake_lock(params[0], params[1], params[2].get("ttl")))
        if method == "lockd.renew":
            return renewal
        return ("value", None)

    return FakeHost(answer)


def within(limit, what, call):
    """call()'s value, which must come within `limit` seconds (the call
    runs in a thread of its own, so that a call that never ends fails the
    test instead of hanging it); raises what call() raised."""
    done = []

    def run():
        try:
            done.append(("value", call()))
        except BaseException as e:
            done.append(("error", e))

    threading.Thread(target=run, daemon=True).start()
    wait_until(what, lambda: done, limit)
    kind, value = done[0]
    if kind == "error":
        raise value
    return value


def lost_in_time(host, why):
    """hold() on `host` alone with a lease of 2 s: `lost` is set before
    the lease ends, saying `why`."""
    lost = []
    taken = time.monotonic()  # the lease starts after this
    lock = Client(host.url).hold(
        "vm-42", client="host-a", ttl=2, on_lost=lambda *a: lost.append(time.monotonic())
    )
    wait_until("lost", lambda: lost, 10)
    lost_at = lost[0]
    assert lost_at < taken + 2, "lost %.3f s after the lease was taken" % (lost_at - taken)
    assert lock.lost_reason.startswith("the lease ran out") and why in lock.lost_reason, lock.lost_reason
    return lost_at - taken


def wrong_type_renew():
    """A host answering lockd.renew with a string: each renewal fails, and
    `lost` is set before the lease ends (the renewing thread goes on)."""
    took = lost_in_time(granting(("value", "renewed")), "not what lockd answers")
    print("renewals answered with a string: lost %.3f s after the lease of 2 s was taken" % took)


def many_fds():
    """With more than 1024 files open, kept-alive connections are reused
    and a held lock is renewed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    files = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    lockd = Recording(URL)
    assert lockd.status("fds") is None and lockd.status("fds") is None
    with lockd.hold("fds", client="host-a", ttl=1.5) as lock:
        wait_until("3 renewals", lambda: len(lockd.renewals()) >= 3, 10)
        assert not lock.lost.is_set(), lock.lost_reason
    failed = [c for c in lockd.calls if c[4] is not None]
    assert not failed, failed
    print("%d files open (the last fd %d): %d renewals" % (len(files), files[-1], len(lockd.renewals())))


def dribbled():
    """A host sending its answer one byte every 0.2 s: the try ends at its
    deadline and the call moves on; a renewal so answered counts as
    failed, and `lost` is set before the lease ends."""
    slow = FakeHost(lambda method, params: ("dribble", None))
    lockd = Client([slow.url, URL], timeout=1)
    began = time.monotonic()
    assert within(10, "status past a dribbling host", lambda: lockd.status("vm-42")) is None
    took = time.monotonic() - began
    assert took < 1.5 and lockd.url == URL, (took, lockd.url)
    lost = lost_in_time(granting(("dribble", fake_lock("vm-42", "host-a", 2))), "no answer within")
    print(
        "a dribbling host: left after %.3f s (timeout 1 s); renewals so answered: "
        "lost %.3f s after the lease was taken" % (took, lost)
    )


def lost_lock_answer():
    """`lock` whose answer was lost, the lock then held under the caller's
    name: OutcomeUnknown (gocept refuses `lock` to its holder: two runs
    under one name must not both go ahead), whether the lost try took it
    or an earlier run did. The same when a resend is answered fault 1 and
    the lock shows the caller; a resent unlock answered fault 2 is done."""
    swallow = FakeHost(lambda method, params: ("swallow", URL))
    for earlier in (False, True):
        if earlier:
            Client(URL).lock("job", "nightly")  # a run under the same name
        try:
            Client([swallow.url, URL]).lock("job", "nightly")
            raise AssertionError("lock after a lost answer succeeded")
        except OutcomeUnknown as e:
            assert "held under this client's name" in str(e) and "by this call or an earlier one" in str(e), e
        assert Client(URL).holder("job") == "nightly"
        Client(URL).unlock("job", "nightly")

    cut = FakeHost(lambda method, params: ("cut",))
    statuses = []

    def late(method, params):
        # The cut try lands late: free when first asked, then held.
        if method == "lockd.status":
            statuses.append(1)
            return ("value", None if len(statuses) == 1 else fake_lock("job", "nightly"))
        if method == "lock":
            return ("fault", 1, "Resource already locked by 'nightly'")
        if method == "unlock":
            return ("fault", 2, "Resource not locked")
        return ("value", None)

    other = FakeHost(late)
    try:
        Client([cut.url, other.url]).lock("job", "nightly")
        raise AssertionError("lock resent and answered fault 1 succeeded")
    except OutcomeUnknown as e:
        assert "held under this client's name" in str(e), e
    assert other.calls == ["lockd.status", "lock", "lockd.status"], other.calls
    # unlock: the status shows the caller, the resend says not locked: done.
    assert Client([cut.url, other.url]).unlock("job", "nightly") is None
    assert other.calls[3:] == ["lockd.status", "unlock"], other.calls
    try:
        Client([cut.url, other.url]).lock("job", "other")
        raise AssertionError("lock of another's lock succeeded")
    except AlreadyLocked as e:
        assert e.holder == "nightly", e
    print("lost lock answers with the lock held under the caller's name: OutcomeUnknown")


def gateways():
    """HTTP 502 and 504 (a proxy in front of a dead lockd) and a 503 that is
    not lockd's own: the request may have reached lockd, the call goes to
    the next host as its kind says. lockd's own 503 (too many connections):
    nothing happened."""
    page = b"<html><body>Bad gateway</body></html>"
    for status, reason in [(502, "Bad Gateway"), (504, "Gateway Timeout"), (503, "Service Unavailable")]:
        proxy = FakeHost(lambda method, params: ("http", status, reason, page))
        lockd = Client([proxy.url, URL])
        lockd.lock("b4", "host-a")
        assert lockd.url == URL and Client(URL).holder("b4") == "host-a"
        assert lockd.status("b4")["client"] == "host-a"
        lockd.unlock("b4", "host-a")
        try:
            Client(proxy.url).lock("b4", "host-a")
            raise AssertionError("HTTP %d: locked" % status)
        except OutcomeUnknown as e:
            assert proxy.url in str(e) and "HTTP %d" % status in str(e), e
    full = b"lockd has 10 connections open (--max-connections); try again\n"
    refusing = FakeHost(lambda method, params: ("http", 503, "Service Unavailable", full))
    try:
        Client(refusing.url).lock("b4", "host-a")
        raise AssertionError("lockd's 503: locked")
    except OutcomeUnknown as e:
        raise AssertionError("lockd's own 503 taken for a request that may have happened: %s" % e)
    except Unavailable as e:
        assert "--max-connections" in str(e), e
    print("HTTP 502, 504 and a proxy's 503: the next host; lockd's own 503: nothing happened")


def unknown_outcomes():
    """Fault 7 "did not happen" is told by its prefix: an "outcome is
    unknown" naming a resource that says "the change did not happen" is
    unknown. system.multicall whose answer was lost: OutcomeUnknown
    without asking lockd.status, unless all of it reads."""
    name = "the change did not happen"
    text = "Lock store unavailable: the outcome is unknown: etcd did not answer about %r" % name
    seven = FakeHost(lambda method, params: ("fault", 7, text))
    try:
        Client(seven.url).lock(name, "host-a")
        raise AssertionError("locked")
    except OutcomeUnknown as e:
        assert str(e) == text, e

    cut = FakeHost(lambda method, params: ("cut",))
    lockd = Client([cut.url, URL])
    try:
        lockd.call("system.multicall", [{"methodName": "lock", "params": ["mc", "host-a"]}])
        raise AssertionError("a multicall settled")
    except OutcomeUnknown as e:
        assert cut.url in str(e), e
    assert Client(URL).holder("mc") is None
    reads = [
        {"methodName": "lockd.status", "params": ["mc"]},
        {"methodName": "system.listMethods", "params": []},
    ]
    answers = lockd.call("system.multicall", reads)
    assert answers[0] == [None] and "lock" in answers[1][0], answers
    print("fault 7 told by its prefix; a multicall whose answer was lost: OutcomeUnknown")


def taken_then_lost():
    """hold() whose acquire took most of the lease and whose renewal before
    returning is refused: it raises, having released the lock by its token,
    so that a retry does not find its own lock in the way."""

    def answer(method, params):
        if method == "lockd.acquire":
            time.sleep(1.0)  # the pace of a slow host: most of the 1.2 s lease
            return ("value", fake_lock(params[0], params[1], params[2].get("ttl")))
        if method == "lockd.renew":
            return ("fault", 5, "Lease expired")
        return ("value", None)

    host = FakeHost(answer)
    try:
        Client(host.url).hold("vm-42", client="host-a", ttl=1.2)
        raise AssertionError("hold() returned a lock it could not renew")
    except LeaseExpired as e:
        assert any("then lost before hold() returned" in note for note in e.__notes__), e.__notes__
    assert host.calls == ["lockd.acquire", "lockd.renew", "lockd.release"], host.calls
    print("a lock taken and lost before hold() returned is released:", host.calls)


{
    "taken_then_lost": taken_then_lost,
    "wrong_type_renew": wrong_type_renew,
    "many_fds": many_fds,
    "dribbled": dribbled,
    "lost_lock_answer": lost_lock_answer,
    "gateways": gateways,
    "unknown_outcomes": unknown_outcomes,
}[sys.argv[2]]()
