"""gocept.lockd's own doctest, played through Python's xmlrpc.client.

Usage: scenario.py URL [URL...]. Prints one line per call: the call, then
`None` or `Fault(code, 'message')`. With several URLs (lockd hosts sharing
one cluster), the calls go to each in turn. The Rust test compares the
lines. For https URLs, LOCKD_CA names the CA to trust, and LOCKD_CERT and
LOCKD_KEY the client's certificate, if any.
"""
import sys
import xmlrpc.client

from gocept_doctest import STEPS
from tls_context import context

servers = [xmlrpc.client.ServerProxy(url, context=context()) for url in sys.argv[1:]]
for i, (method, resource, client) in enumerate(STEPS):
    server = servers[i % len(servers)]
    try:
        outcome = repr(getattr(server, method)(resource, client))
    except xmlrpc.client.Fault as fault:
        outcome = "Fault(%d, %r)" % (fault.faultCode, fault.faultString)
    print("%s(%r, %r) -> %s" % (method, resource, client, outcome))
