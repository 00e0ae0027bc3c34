"""Introspection and multicall through Python's xmlrpc.client.

Usage: introspect.py URL. Prints what the server answers, one line each.
"""
import sys
import xmlrpc.client

server = xmlrpc.client.ServerProxy(sys.argv[1])
print("methods", server.system.listMethods())
print("signature", server.system.methodSignature("lock"))
print("help", server.system.methodHelp("unlock").split(":")[0])

multi = xmlrpc.client.MultiCall(server)
multi.lock("m", "a")
multi.lock("m", "b")
multi.unlock("m", "a")
results = multi()
for i in range(3):
    try:
        print("multicall", repr(results[i]))
    except xmlrpc.client.Fault as fault:
        print("multicall Fault(%d, %r)" % (fault.faultCode, fault.faultString))
