"""What the client_*.py scripts share: waiting for an event, a Client that
records its calls, and a watcher that polls who holds a lock."""
import threading
import time

from lockd_client import Client, LockError


def wait_until(what, event, limit=60):
    """Waits for `event()` to be true, looking every 10 ms, for `limit`
    seconds at most."""
    deadline = time.monotonic() + limit
    while not event():
        assert time.monotonic() < deadline, "waited %s s for %s" % (limit, what)
        time.sleep(0.01)


class Recording(Client):
    """A Client that keeps (method, started, ended, host answering last,
    error or None) for each call, renewals of held locks included."""

    def __init__(self, urls, **kw):
        super().__init__(urls, **kw)
        self.calls = []

    def _call(self, method, params, *args, **kw):
        started, error = time.monotonic(), None
        try:
            return super()._call(method, params, *args, **kw)
        except LockError as e:
            error = e
            raise
        finally:
            self.calls.append((method, started, time.monotonic(), self.url, error))

    def renewals(self, url=None, since=0.0):
        """The renewals that succeeded (on `url`, started after `since`)."""
        return [
            c
            for c in self.calls
            if c[0] == "lockd.renew" and c[4] is None and c[1] >= since and url in (None, c[3])
        ]


class Watch:
    """Polls lockd.status of `resource` on `urls` from a thread of its own
    until stopped; `seen` is the set of (client, token) answered, None for
    a free lock."""

    def __init__(self, urls, resource):
        self._client = Client(urls, timeout=2)
        self._resource = resource
        self._stop = threading.Event()
        self.seen = set()
        self.polls = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.02):
            try:
                lock = self._client.status(self._resource)
            except LockError:
                continue
            self.seen.add(None if lock is None else (lock["client"], lock["token"]))
            self.polls += 1

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.seen
