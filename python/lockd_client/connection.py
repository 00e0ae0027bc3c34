"""One HTTP/1.1 connection to a host: a request out, and one answer read
back within the try's deadline and at most MAX_ANSWER bytes; whether an
idle kept-alive connection may carry another request.

Only moves bytes: what an answer's status means is ``http``'s to say.
"""

import socket
import ssl
import time

# The most bytes an answer may have (its head included), as the command
# line's: more is not lockd.
MAX_ANSWER = 64 * 1024 * 1024


class _Cut(Exception):
    """The connection ended before the whole answer came."""


class _Garbled(Exception):
    """What came back is not HTTP."""


class _TooBig(Exception):
    """The answer is over MAX_ANSWER."""


class _Connection:
    """A connection to a host, and what it has read of an answer. Each
    read may take what is left of the try's time, no more, and an answer
    may have MAX_ANSWER bytes at most."""

    def __init__(self, sock):
        self.sock = sock
        self._buffer = bytearray()
        self._deadline = 0.0
        self._read = 0

    def close(self):
        self.sock.close()

    def reusable(self):
        """Whether the connection, idle since its last answer, may carry a
        request: nothing came on it since (the server closing it after its
        idle timeout would lose the request). Looks without waiting."""
        if self._buffer:
            return False
        try:
            self.sock.setblocking(False)
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.recv(1)  # handles TLS records such as session tickets
            else:
                self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        return False  # closed, or something came that no request asked for

    def _left(self):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the try's time ran out")
        return left

    def send(self, request, deadline):
        self.sock.settimeout(max(deadline - time.monotonic(), 1e-6))
        self.sock.sendall(request)

    def _fill(self):
        """Reads what comes next into the buffer; False at the end."""
        if self._read > MAX_ANSWER:
            raise _TooBig()
        self.sock.settimeout(self._left())
        chunk = self.sock.recv(65536)
        self._read += len(chunk)
        self._buffer += chunk
        return bool(chunk)

    def _line(self):
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line.rstrip(b"\r\n")
            if len(self._buffer) > 65536:
                raise _Garbled("a line of more than 64 KiB")
            if not self._fill():
                raise _Cut()

    def _exactly(self, n):
        while len(self._buffer) < n:
            if not self._fill():
                raise _Cut()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _to_end(self):
        while self._fill():
            pass
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def answer(self, deadline):
        """(status, reason, body, whether the connection may be kept) of
        the answer that comes by ``deadline``."""
        self._deadline = deadline
        self._read = len(self._buffer)
        while True:
            line = self._line()
            try:
                version, status, reason = (line.decode("latin-1").split(None, 2) + [""])[:3]
                status = int(status)
            except ValueError:
                raise _Garbled(repr(line[:60])) from None
            if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
                raise _Garbled(repr(line[:60]))
            headers = {}
            while True:
                line = self._line()
                if not line:
                    break
                name, colon, value = line.decode("latin-1").partition(":")
                if not colon or len(headers) > 100:
                    raise _Garbled("a malformed header %r" % (line[:60],))
                name = name.strip().lower()
                headers[name] = headers[name] + "," + value.strip() if name in headers else value.strip()
            if status >= 200:
                break
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        coding = headers.get("transfer-encoding", "").lower()
        if status in (204, 304):
            body = b""
        elif coding:
            if coding.split(",")[-1].strip() != "chunked":
                raise _Garbled("Transfer-Encoding %r" % (coding,))
            body = self._chunked()
        elif "content-length" in headers:
            lengths = {v.strip() for v in headers["content-length"].split(",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise _Garbled("Content-Length %r" % (headers["content-length"],))
            length = int(lengths.pop())
            if length > MAX_ANSWER:
                raise _TooBig()
            body = self._exactly(length)
        else:
            body, keep = self._to_end(), False
        return status, reason, body, keep

    def _chunked(self):
        body = bytearray()
        while True:
            size = self._line().split(b";")[0].strip()
            try:
                size = int(size, 16)
            except ValueError:
                raise _Garbled("a chunk size %r" % (size[:20],)) from None
            if size < 0 or len(body) + size > MAX_ANSWER:
                raise _TooBig()
            if size == 0:
                while self._line():  # trailers
                    pass
                return bytes(body)
            body += self._exactly(size)
            if self._line():
                raise _Garbled("no CRLF after a chunk")

