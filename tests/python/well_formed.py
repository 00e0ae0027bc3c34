"""Every answer parses in Python's xmlrpc.client, whatever a lock file
written by hand holds: lists all locks and the status of argv[2]."""

import sys
import xmlrpc.client

server = xmlrpc.client.ServerProxy(sys.argv[1])
listed = server.lockd.list("")
status = server.lockd.status(sys.argv[2])
print(listed)
print(status)
assert status["client"] == listed[0]["client"], (status, listed)
