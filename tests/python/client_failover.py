"""lockd_client across two lockd hosts of one cluster, A and B.

Usage: client_failover.py URL_A URL_B SCENARIO [PID_A]. Each scenario
asserts and exits non-zero on the first mismatch; it prints its figures.
`killed` and `paused` send SIGKILL and SIGSTOP (then SIGCONT) to host A's
process PID_A.
"""
import os
import signal
import socket
import sys
import threading
import time
import xmlrpc.client

from client_common import Recording, Watch, wait_until
from lockd_client import AlreadyLocked, Client, OutcomeUnknown

A, B = sys.argv[1], sys.argv[2]


def held_through(stop_a, what):
    """hold() with ttl 3 (renewals every second) renewing on A, while
    `stop_a()` stops host A: renewals move to B, and the lock stays the
    same (client, token) all along as B tells. Prints how long the renewal
    that moved took."""
    lockd = Recording([A, B])
    with lockd.hold("vm-42", client="host-a", ttl=3) as lock:
        token = lock.token
        watch = Watch(B, "vm-42")
        wait_until("a renewal on A", lambda: lockd.renewals(A))
        stopped = time.monotonic()
        stop_a()
        wait_until("3 renewals on B", lambda: len(lockd.renewals(B, since=stopped)) >= 3)
        moved = lockd.renewals(B, since=stopped)[0]
        seen = watch.stop()
        assert not lock.lost.is_set(), lock.lost_reason
        assert lock.token == token and lock.check()
    assert seen == {("host-a", token)}, seen
    failed = [c for c in lockd.calls if c[4] is not None]
    assert not failed, failed
    print(
        "host A %s: the next renewal moved to B in %.3f s (%.3f s after A stopped)"
        % (what, moved[2] - moved[1], moved[2] - stopped)
    )


def killed():
    held_through(lambda: os.kill(int(sys.argv[4]), signal.SIGKILL), "killed (kill -9)")


def paused():
    pid = int(sys.argv[4])
    try:
        held_through(lambda: os.kill(pid, signal.SIGSTOP), "paused (SIGSTOP)")
    finally:
        os.kill(pid, signal.SIGCONT)


class Swallowing:
    """A proxy in front of `url`: forwards each request and keeps the
    answer (`answers`), closing the connection to its client instead of
    passing it on: the client's request was carried out, its answer lost."""

    def __init__(self, url):
        self._upstream = url.split("//")[1].rstrip("/")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/" % self._listener.getsockname()[1]
        self.answers = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            conn, _ = self._listener.accept()
            with conn:
                request = conn.recv(65536)
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, body = request.split(b"\r\n\r\n", 1)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                upstream = xmlrpc.client.ServerProxy("http://" + self._upstream)
                params, method = xmlrpc.client.loads(body)
                try:
                    answer = getattr(upstream, method)(*params)
                except xmlrpc.client.Fault as fault:
                    answer = fault
                self.answers.append((method, answer))

    def client(self):
        """A client trying this proxy first, then B."""
        return Client([self.url, B])


def lost_answers():
    """Calls carried out on A whose answers were lost: each is settled on
    B as docs/cluster.md says, never taken twice nor refused for itself."""
    proxy = Swallowing(A)
    b = Client(B)

    # lockd.acquire: retried on B with its request_id, answered with the
    # lock A took (same token), not fault 1 and not a second lock.
    lock = proxy.client().acquire("job", "w1", ttl=30)
    assert proxy.answers[-1][0] == "lockd.acquire", proxy.answers
    taken = proxy.answers[-1][1]
    assert lock.token == taken["token"] and lock.client == "w1", (lock, taken)
    assert b.status("job")["token"] == lock.token
    try:
        Client(B).acquire("job", "w2")
        raise AssertionError("a second lock")
    except AlreadyLocked as e:
        assert e.holder == "w1"

    # lock: B says the client holds it, which gocept's `lock` refuses: by
    # this call or an earlier one under the same name, it cannot tell.
    try:
        proxy.client().lock("gocept", "c1")
        raise AssertionError("no OutcomeUnknown")
    except OutcomeUnknown as e:
        assert "held under this client's name" in str(e), e
    assert proxy.answers[-1] == ("lock", None) and b.holder("gocept") == "c1"
    # unlock, release (with a token): B says the lock is not the client's
    # any more: done.
    proxy.client().unlock("gocept", "c1")
    assert proxy.answers[-1] == ("unlock", None) and b.holder("gocept") is None
    proxy.client().release("job", "w1", lock.token)
    assert proxy.answers[-1] == ("lockd.release", None) and b.holder("job") is None
    # break_lock: B says it is free: done, the lock it broke not known.
    b.lock("vm", "x")
    assert proxy.client().break_lock("vm", "test") is None
    assert proxy.answers[-1][1]["client"] == "x" and b.holder("vm") is None

    # With the proxy alone nothing is sent twice: the outcome is unknown.
    alone = Client(proxy.url)
    try:
        alone.lock("solo", "c1")
        raise AssertionError("no OutcomeUnknown")
    except OutcomeUnknown as e:
        assert proxy.url in str(e), e
    assert [m for m, _ in proxy.answers].count("lock") == 2 and b.holder("solo") == "c1"
    print("%d calls carried out on A with their answers lost, each settled on B" % len(proxy.answers))


{"killed": killed, "paused": paused, "lost_answers": lost_answers}[sys.argv[3]]()
