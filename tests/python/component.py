"""lockd's component in-process through python/lockd_component.py.

Usage: component.py WASM DIR. Plays gocept.lockd's doctest on the lock
directory DIR, printing each call and its outcome as scenario.py does (so
the Rust test compares the same lines), then leaves DIR with
'resource2' locked by 'client2' and 'job' acquired by 'worker-1' with a
30 s lease, for the daemon to find.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from gocept_doctest import STEPS  # noqa: E402
from lockd_component import LockDir, LockError  # noqa: E402

wasm, directory = sys.argv[1], sys.argv[2]
locks = LockDir(directory, wasm=wasm)
for method, resource, client in STEPS:
    try:
        outcome = repr(getattr(locks, method)(resource, client))
    except LockError as fault:
        outcome = "Fault(%d, %r)" % (fault.code, str(fault))
    print("%s(%r, %r) -> %s" % (method, resource, client, outcome))
lock = locks.acquire("job", "worker-1", ttl=30)
assert lock["client"] == "worker-1" and lock["ttl"] == 30.0, lock
assert locks.check("job", lock["token"]) is True
assert [l["resource"] for l in locks.list()] == ["job", "resource2"], locks.list()
