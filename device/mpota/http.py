# A small HTTP/1.1 client over TLS with certificate verification against a
# pinned CA and the server's hostname.  (micropython-lib's requests turns
# certificate checks off, so the agent does not use it.)
#
#   c = Client("https://updates.example.com", ca_der)
#   r = c.request("GET", "/v1/update?board=x", {"Authorization": "Bearer ..."})
#   data = r.read_all(8192)
import socket
import tls

from mpota.errors import DownloadError, TLSError, TransportError

_LINE = const(512)
_HEADERS = const(40)
_KEEP = ("content-length", "content-range", "location", "connection", "transfer-encoding")
_MEANING = {
    401: "the server does not accept this device's id/token: re-provision the token",
    403: "the server refused the request (expired or altered payload URL, or not allowed)",
    404: "not found on the server",
    413: "the request was too large for the server",
    416: "the requested byte range is outside the payload",
}


def split_url(url):
    """'https://host:port/path' -> (host, port, path)."""
    if not url.startswith("https://"):
        raise DownloadError("refusing %r: only https:// URLs are followed" % url)
    rest = url[8:]
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, port = hostport, 443
    if ":" in hostport:
        host, port_text = hostport.rsplit(":", 1)
        try:
            port = int(port_text)
        except ValueError:
            raise DownloadError("bad port in URL %r" % url)
    if not host:
        raise DownloadError("no host in URL %r" % url)
    return host, port, path


class Response:
    def __init__(self, sock, status, headers):
        self._sock = sock
        self.status = status
        self.headers = headers
        length = headers.get("content-length")
        self.length = int(length) if length is not None else None
        self.remaining = self.length

    def readinto(self, mv):
        """Read body bytes into mv (never past Content-Length); 0 at the end."""
        if self.remaining is not None:
            if self.remaining == 0:
                return 0
            if len(mv) > self.remaining:
                mv = mv[: self.remaining]
        try:
            n = self._sock.readinto(mv)
        except OSError as e:
            raise TransportError("connection broke while reading: %s" % (e,))
        if not n:
            if self.remaining:
                raise TransportError("connection closed %d bytes early" % self.remaining)
            return 0
        if self.remaining is not None:
            self.remaining -= n
        return n

    def read_all(self, limit):
        """The whole body, refusing one longer than limit bytes."""
        if self.length is None or self.length > limit:
            raise DownloadError("response body of %s bytes exceeds the %d-byte limit"
                                % (self.length, limit))
        body = bytearray(self.length)
        mv = memoryview(body)
        got = 0
        while got < self.length:
            n = self.readinto(mv[got:])
            if not n:
                break
            got += n
        return bytes(body)


class Client:
    def __init__(self, base_url, ca_der, stall_s=10, redirects=3):
        self.host, self.port, self.prefix = split_url(base_url)
        self.prefix = self.prefix.rstrip("/")
        self.ca_der = ca_der
        self.stall_s = stall_s
        self.redirects = redirects
        self._sock = None
        self._at = None  # (host, port) of the open connection
        self._line = bytearray(_LINE)  # header lines are read here: no allocation per line

    def _readline(self, sock):
        # one byte at a time from TLS's already-decrypted buffer, into _line
        mv = memoryview(self._line)
        n = 0
        while n < _LINE:
            if not sock.readinto(mv[n:n + 1]):
                break
            n += 1
            if self._line[n - 1] == 10:
                break
        return bytes(mv[:n])

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass  # already broken: closing is best effort
        self._sock = None
        self._at = None

    def _connect(self, host, port):
        if self._sock is not None and self._at == (host, port):
            return self._sock
        self.close()
        try:
            addr = socket.getaddrinfo(host, port)[0][-1]
            raw = socket.socket()
            raw.settimeout(self.stall_s)
            raw.connect(addr)
        except OSError as e:
            raise TransportError("cannot connect to %s:%d: %s" % (host, port, e))
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        ctx.load_verify_locations(self.ca_der)
        try:
            self._sock = ctx.wrap_socket(raw, server_hostname=host)
        except (OSError, ValueError) as e:
            raw.close()
            raise TLSError("TLS handshake with %s failed (%s): its certificate is not signed by "
                           "the pinned CA or is not for this host name" % (host, str(e).strip()))
        self._at = (host, port)
        return self._sock

    def _send(self, sock, method, host, path, headers, body):
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host,
                 "Connection: keep-alive", "User-Agent: mpota"]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        if body is not None:
            lines.append("Content-Length: %d" % len(body))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        try:
            sock.write(head)
            if body:
                sock.write(body)
        except OSError as e:
            raise TransportError("connection broke while sending: %s" % (e,))

    def _head(self, sock):
        try:
            status_line = self._readline(sock)
        except OSError as e:
            raise TransportError("no response: %s" % (e,))
        if not status_line:
            raise TransportError("server closed the connection without answering")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise DownloadError("not an HTTP response: %r" % status_line[:60])
        if parts[0] == b"HTTP/1.0":
            self._at = ("closing", 0)  # HTTP/1.0 closes after the response
        try:
            status = int(parts[1])
        except ValueError:
            raise DownloadError("bad HTTP status line %r" % status_line[:60])
        headers = {}
        for _ in range(_HEADERS):
            try:
                line = self._readline(sock)
            except OSError as e:
                raise TransportError("connection broke in the headers: %s" % (e,))
            if not line.endswith(b"\n"):
                raise DownloadError("response header line too long or truncated")
            if line in (b"\r\n", b"\n"):
                return status, headers
            name, _, value = line.decode().partition(":")
            name = name.strip().lower()
            if name in _KEEP:
                headers[name] = value.strip()
        raise DownloadError("more than %d response headers" % _HEADERS)

    def request(self, method, target, headers=None, body=None):
        """Send a request and return its Response, following redirects.

        target is a path under the base URL or an absolute https:// URL."""
        if target.startswith("https://"):
            host, port, path = split_url(target)
        else:
            host, port, path = self.host, self.port, self.prefix + target
        for _ in range(self.redirects + 1):
            reused = self._sock is not None and self._at == (host, port)
            sock = self._connect(host, port)
            try:
                self._send(sock, method, host, path, headers, body)
                status, hdrs = self._head(sock)
            except TransportError:
                if not reused:
                    raise
                # the server had closed the idle keep-alive connection: once more, fresh
                self.close()
                sock = self._connect(host, port)
                self._send(sock, method, host, path, headers, body)
                status, hdrs = self._head(sock)
            if hdrs.get("transfer-encoding", "identity").lower() != "identity":
                self.close()
                raise DownloadError("chunked responses are not supported; send Content-Length")
            if hdrs.get("connection", "").lower() == "close":
                self._at = ("closing", 0)  # do not reuse after this response
            if status in (301, 302, 303, 307, 308) and "location" in hdrs:
                self.close()
                location = hdrs["location"]
                if location.startswith("https://"):
                    host, port, path = split_url(location)
                elif location.startswith("/"):
                    path = location
                else:
                    raise DownloadError("refusing redirect to %r" % location)
                continue
            return Response(sock, status, hdrs)
        raise DownloadError("more than %d redirects" % self.redirects)

    def expect(self, response, *ok):
        """Raise a DownloadError naming the status unless it is one of ok."""
        if response.status in ok:
            return response
        self.close()
        meaning = _MEANING.get(response.status)
        if meaning is None:
            meaning = "server error: will retry later" if response.status >= 500 \
                else "unexpected answer"
        if response.status >= 500:
            raise TransportError("HTTP %d: %s" % (response.status, meaning), response.status)
        raise DownloadError("HTTP %d: %s" % (response.status, meaning), response.status)
