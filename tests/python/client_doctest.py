"""gocept.lockd's own doctest, played through lockd_client.

Usage: client_doctest.py URL[,URL...]. Prints one line per call as
scenario.py does (the Rust test compares the same lines), the faults
raised as lockd_component's exception classes.
"""
import sys

from gocept_doctest import STEPS
from lockd_client import Client, LockError

lockd = Client(sys.argv[1])
for method, resource, client in STEPS:
    try:
        outcome = repr(getattr(lockd, method)(resource, client))
    except LockError as fault:
        outcome = "Fault(%d, %r)" % (fault.code, str(fault))
    print("%s(%r, %r) -> %s" % (method, resource, client, outcome))
