"""acquire+release pairs over one kept-alive connection, with a 10-byte
and a 1,000-byte client name: prints the time per pair of each."""

import sys
import time
import xmlrpc.client

url, pairs = sys.argv[1], int(sys.argv[2])
server = xmlrpc.client.ServerProxy(url)
for length in (10, 1000):
    client = "c" * length
    server.lockd.acquire("warm-up", client)
    server.lockd.release("warm-up", client)
    start = time.perf_counter()
    for i in range(pairs):
        server.lockd.acquire(f"long-{i}", client)
        server.lockd.release(f"long-{i}", client)
    per_pair = (time.perf_counter() - start) / pairs
    print(f"{length}-byte client: {per_pair * 1000:.2f} ms")
