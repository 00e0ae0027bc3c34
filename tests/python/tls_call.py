"""One call over https with Python's xmlrpc.client, reporting how it went.

Usage: tls_call.py URL METHOD [ARG...]. Prints `ok <repr of the result>`,
`fault <code>`, or `refused <exception class>: <message>` when the
connection failed (a TLS handshake refused, say). The context comes from
LOCKD_CA, LOCKD_CERT and LOCKD_KEY (tls_context.py)."""
import sys
import xmlrpc.client

from tls_context import context

url, method, *args = sys.argv[1:]
server = xmlrpc.client.ServerProxy(url, context=context())
try:
    result = server
    for part in method.split("."):
        result = getattr(result, part)
    print("ok %r" % (result(*args),))
except xmlrpc.client.Fault as fault:
    print("fault %d" % fault.faultCode)
except (OSError, xmlrpc.client.ProtocolError) as e:
    print("refused %s: %s" % (type(e).__name__, e))
