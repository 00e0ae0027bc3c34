"""lockd_client refusing what it cannot use, naming the URL at fault, and
taking nothing meanwhile.

Usage: client_bad_input.py URL (a lockd host). Asserts and exits non-zero
on the first mismatch.
"""
import http.server
import socket
import sys
import threading

from lockd_client import Client, ProtocolError, Unavailable

URL = sys.argv[1]


def refused(urls, names):
    try:
        Client(urls)
    except ValueError as e:
        assert names in str(e), (urls, e)
        return
    raise AssertionError("%r accepted" % (urls,))


refused([], "no lockd URL")
refused("", "empty URL")
refused(URL + ",", "empty URL")
refused("ftp://127.0.0.1:8000/", "'ftp://127.0.0.1:8000/' is not an http:// or https:// URL")
refused("127.0.0.1:8000", "'127.0.0.1:8000' is not an http")
refused([URL, "http:///"], "'http:///' names no host")
refused("http://127.0.0.1:port/", "'http://127.0.0.1:port/' has a malformed port")
refused(URL + ", " + URL, "%r is named twice" % (URL,))
assert Client(URL).timeout == 30, "the command line's --timeout is 30 s by default"


class Html(http.server.BaseHTTPRequestHandler):
    """A web server that is no lockd: an HTML page at /, 404 elsewhere."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        page = b"<html><body>Welcome</body></html>"
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
threading.Thread(target=web.serve_forever, daemon=True).start()
page = "http://127.0.0.1:%d/" % web.server_address[1]
for bad, said in [(page, "not XML-RPC: '<html>"), (page + "RPC2", "HTTP 404")]:
    try:
        Client([bad, URL]).lock("vm-42", "host-a")
        raise AssertionError("%s accepted" % bad)
    except ProtocolError as e:
        assert e.url == bad and bad in str(e) and said in str(e), e

# Nothing listening: Unavailable naming the URL; then the next host.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    dead = "http://127.0.0.1:%d/" % s.getsockname()[1]
try:
    Client(dead).lock("vm-42", "host-a")
    raise AssertionError("a dead host answered")
except Unavailable as e:
    assert str(e).startswith(dead + ": "), e

assert Client(URL).status("vm-42") is None, "taken by a call refused"
lockd = Client([dead, URL])
lockd.lock("vm-42", "host-a")
assert lockd.url == URL and Client(URL).holder("vm-42") == "host-a"
lockd.unlock("vm-42", "host-a")
