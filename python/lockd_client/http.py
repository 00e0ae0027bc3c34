"""One lockd host over HTTP: its URL and credentials, the name looked up
and the connection (TLS included) made within the try's time, the
kept-alive connections no call is using, and what an answer's HTTP status
means: a body to decode, nothing sent (lockd's own 503), an answer lost
(502, 504, another 503, a cut connection) or a ProtocolError.
"""

import base64
import selectors
import socket
import ssl
import threading
import time
import urllib.parse

from .connection import MAX_ANSWER, _Connection, _Cut, _Garbled, _TooBig
from .errors import ProtocolError, _Lost, _NotSent


class _Host:
    """One lockd host: its URL and the kept-alive connections to it that no
    call is using now."""

    def __init__(self, url, user, password, ssl_context):
        parts = urllib.parse.urlsplit(url)
        # Named in errors and logs: without the password.
        self.url = url if parts.password is None else url.replace(":" + parts.password + "@", "@", 1)
        self._https = parts.scheme == "https"
        self._name = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._context = ssl_context
        if self._https and ssl_context is None:
            self._context = ssl.create_default_context()
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        headers = [
            ("Host", parts.netloc.rpartition("@")[2]),
            ("User-Agent", "lockd_client"),
            ("Content-Type", "text/xml"),
        ]
        user = user if user is not None else parts.username
        password = password if password is not None else parts.password
        if user is not None:
            credentials = "%s:%s" % (urllib.parse.unquote(user), urllib.parse.unquote(password or ""))
            headers.append(("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode()))
        self._head = "POST %s HTTP/1.1\r\n%s" % (path, "".join("%s: %s\r\n" % h for h in headers))
        self._idle = []
        self._idle_lock = threading.Lock()

    def _addresses(self, deadline):
        """The host's addresses, the name resolved within the try's time
        (in a thread of its own, as getaddrinfo takes no timeout)."""
        try:
            return socket.getaddrinfo(
                self._name, self._port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except (socket.gaierror, UnicodeError):
            pass
        found = []
        done = threading.Event()

        def resolve():
            try:
                found.append(socket.getaddrinfo(self._name, self._port, type=socket.SOCK_STREAM))
            except (OSError, UnicodeError) as e:
                found.append(e)
            finally:
                done.set()

        try:
            threading.Thread(target=resolve, name="lockd resolve %s" % (self._name,), daemon=True).start()
        except RuntimeError as e:
            raise _NotSent("%s not resolved: %s" % (self._name, e)) from None
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise _NotSent("%s not resolved within the try's time" % (self._name,))
        if isinstance(found[0], Exception):
            raise _NotSent("%s not resolved: %s" % (self._name, _describe(found[0])))
        return found[0]

    def _connect(self, deadline):
        """A new connection (TLS handshake done) by ``deadline``."""
        said = "no address"
        for family, kind, proto, _, address in self._addresses(deadline):
            left = deadline - time.monotonic()
            if left <= 0:
                said = "no connection within the try's time"
                break
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(left)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._https:
                    sock = self._handshake(sock, deadline)
                return _Connection(sock)
            except TimeoutError:
                sock.close()
                said = "no connection within the try's time"
            except OSError as e:
                sock.close()
                said = _describe(e)
        raise _NotSent(said)

    def _handshake(self, sock, deadline):
        tls = self._context.wrap_socket(sock, server_hostname=self._name, do_handshake_on_connect=False)
        try:
            tls.setblocking(False)
            with selectors.DefaultSelector() as selector:
                while True:
                    try:
                        tls.do_handshake()
                        return tls
                    except ssl.SSLWantReadError:
                        event = selectors.EVENT_READ
                    except ssl.SSLWantWriteError:
                        event = selectors.EVENT_WRITE
                    left = deadline - time.monotonic()
                    selector.register(tls, event)
                    ready = left > 0 and selector.select(left)
                    selector.unregister(tls)
                    if not ready:
                        raise TimeoutError("no TLS handshake within the try's time")
        except BaseException:
            tls.close()
            raise

    def _connection(self, deadline):
        """A kept-alive connection the server has not closed, or a new one."""
        with self._idle_lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable():
                    return conn
                conn.close()
        return self._connect(deadline)

    def post(self, body, deadline):
        """The body of the host's 200 answer to ``body``, all of it by
        ``deadline`` (time.monotonic())."""
        began = time.monotonic()
        conn = self._connection(deadline)
        request = (self._head + "Content-Length: %d\r\n\r\n" % len(body)).encode("latin-1") + body
        try:
            conn.send(request, deadline)
        except OSError as e:
            # Not all of the request went out: it cannot have been carried out.
            conn.close()
            said = "not within the try's time" if isinstance(e, TimeoutError) else _describe(e)
            raise _NotSent("the request could not be sent: %s" % (said,)) from None
        try:
            status, reason, data, keep = conn.answer(deadline)
        except _TooBig:
            conn.close()
            said = "%s answered more than %d bytes: not lockd" % (self.url, MAX_ANSWER)
            raise ProtocolError(said, self.url) from None
        except _Garbled as e:
            conn.close()
            said = "%s answered something that is not HTTP: %s" % (self.url, e)
            raise ProtocolError(said, self.url) from None
        except _Cut:
            conn.close()
            raise _Lost("the connection was closed before the whole answer came") from None
        except OSError as e:
            conn.close()
            raise _Lost(_describe(e, deadline - began)) from None
        if keep:
            with self._idle_lock:
                self._idle.append(conn)
        else:
            conn.close()
        if status == 200:
            return data
        said = "HTTP %d %s" % (status, reason)
        text = data[:200].decode("utf-8", "replace").strip()
        if status == 503 and data.startswith(b"lockd has ") and b"(--max-connections)" in data:
            raise _NotSent("%s: %s" % (said, text))
        if status in (502, 503, 504):
            # Something in front of lockd: the request may have reached it.
            raise _Lost("%s%s" % (said, ": " + text[:80] if text else ""))
        raise ProtocolError("%s answered %s, not XML-RPC" % (self.url, said), self.url)


def _describe(error, took=None):
    if isinstance(error, TimeoutError) and took is not None:
        return "no answer within %.3g s" % (took,)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__

