# A small HTTP/1.1 client over TLS with certificate verification against the
# pinned CAs and the server's hostname.  (micropython-lib's requests turns
# certificate checks off, so the agent does not use it.)
#
#   c = Client("https://updates.example.com", ca.certs(pem))   # base URL may be None
#   r = c.request("GET", "/v1/update?board=x", {"Authorization": "Bearer ..."})
#   data = c.expect(r, 200).read_all(8192)
#
# Failures are DownloadError (permanent: HTTP 4xx, a response the agent does
# not accept, a redirect it must not follow), TLSError (the certificate is not
# trusted: permanent) or TransportError (drops, stalls, handshakes cut short,
# 5xx: retryable); decide by e.retryable.
import socket
import tls

from mpota.errors import ConfigError, DownloadError, TLSError, TransportError

_LINE = const(512)  # header lines are read here; longer ones in pieces
_HEAD_MAX = const(8192)  # all the response's header lines together
_DISCARD = const(2048)  # a redirect or error body up to this is read to keep the connection
_KEEP = (b"content-length", b"content-range", b"location", b"connection",
         b"transfer-encoding", b"content-encoding")
_MOVED = (301, 302, 303, 307, 308)
_MEANING = {
    401: "the server does not accept this device's id/token: re-provision the token",
    403: "the server refused the request (expired or altered payload URL, or not allowed)",
    404: "not found on the server",
    408: "the server timed out waiting for the request: will retry later",
    410: "gone from the server (an expired payload URL?)",
    413: "the request was too large for the server",
    416: "the requested byte range is outside the payload",
    429: "the server asks to slow down: will retry later",
}


def short(url):
    """url for a message: without its query (it may hold a signature), at most 100 chars."""
    q = url.find("?")
    if q >= 0:
        url = url[:q] + "?..."
    return url if len(url) <= 100 else url[:60] + "..." + url[-37:]


def _hostport(host, port):
    return host if port == 443 else "%s:%d" % (host, port)


def split_url(url):
    """'https://host:port/path?query' -> (host, port, path)."""
    if url[:8].lower() != "https://":
        raise DownloadError("refusing %s: only https:// URLs are followed" % short(url))
    rest = url[8:].split("#", 1)[0]
    cut = len(rest)
    for sep in "/?":
        at = rest.find(sep)
        if 0 <= at < cut:
            cut = at
    hostport, path = rest[:cut], rest[cut:]
    if not path.startswith("/"):
        path = "/" + path
    host, port = hostport, 443
    if ":" in hostport:
        host, port_text = hostport.rsplit(":", 1)
        try:
            port = int(port_text)
        except ValueError:
            raise DownloadError("bad port %r in URL %s" % (port_text, short(url)))
    if not host:
        raise DownloadError("no host in URL %s" % short(url))
    return host, port, path


def _dots(path):
    # RFC 3986 5.2.4: "/a/b/../c" -> "/a/c", for relative redirects
    q = path.find("?")
    tail = "" if q < 0 else path[q:]
    segments = (path if q < 0 else path[:q]).split("/")
    out = []
    for seg in segments:
        if seg == "..":
            if len(out) > 1:
                out.pop()
        elif seg != ".":
            out.append(seg)
    if segments[-1] in (".", ".."):
        out.append("")
    return "/".join(out) + tail


def _where_text(where):
    return short("https://%s%s" % (_hostport(where[0], where[1]), where[2]))


class Response:
    def __init__(self, sock, status, headers, where, method):
        self._sock = sock
        self.status = status
        self.headers = headers
        self.where = where  # (host, port, path) it came from
        self.length = None
        length = headers.get("content-length")
        if length is not None:
            try:
                self.length = int(length)
                if self.length < 0:
                    raise ValueError
            except ValueError:
                raise DownloadError("bad Content-Length %r from %s" % (length[:20], self.url()))
        if status < 200 or status in (204, 304) or method == "HEAD":
            self.length = 0
        self.chunked = headers.get("transfer-encoding", "identity").lower() != "identity"
        # bytes of body still to read; None: the body ends when the server closes
        self.remaining = None if self.chunked else self.length

    def url(self):
        return _where_text(self.where)

    def readinto(self, mv):
        """Read body bytes into mv (never past Content-Length); 0 at the end."""
        left = self.remaining
        if left is not None:
            if left == 0:
                return 0
            if len(mv) > left:
                mv = mv[:left]
        try:
            n = self._sock.readinto(mv)
        except OSError as e:
            raise TransportError("connection to %s broke while reading: %s" % (self.url(), e))
        if not n:
            if left:
                raise TransportError("%s closed the connection %d bytes early"
                                     % (self.url(), left))
            self.remaining = 0
            return 0
        if left is not None:
            self.remaining = left - n
        return n

    def read_all(self, limit):
        """The whole body, refusing one longer than limit bytes.  A body
        without Content-Length ends when the server closes the connection."""
        if self.length is not None and self.length > limit:
            raise DownloadError("the answer from %s has %d bytes; at most %d are accepted"
                                % (self.url(), self.length, limit))
        size = limit + 1 if self.length is None else self.length
        body = bytearray(size)
        mv = memoryview(body)
        got = 0
        while got < size:
            n = self.readinto(mv[got:])
            if not n:
                break
            got += n
        if got > limit:
            raise DownloadError("the answer from %s is longer than the %d bytes accepted"
                                % (self.url(), limit))
        return bytes(mv[:got])


def _tls_reason(e):
    # mbedTLS's verify info: one line per failed check
    return "; ".join(line.strip() for line in str(e).split("\n") if line.strip())


class Client:
    def __init__(self, base_url, cas, stall_s=10, redirects=3):
        """base_url: the mpota server (None: absolute https:// targets only);
        cas: the DER certificates to trust (mpota.ca.certs), or one DER."""
        self.base = None
        if base_url:
            host, port, prefix = split_url(base_url)
            self.base = (host, port, prefix.rstrip("/"))
        self.cas = [cas] if type(cas) in (bytes, bytearray) else list(cas)
        self.stall_s = stall_s
        self.redirects = redirects
        self._sock = None
        self._at = None  # (host, port) of the open connection
        self._keep = False  # the open connection may carry another request
        self._last = None  # the last Response on it: reused only once fully read
        self._moved = None  # (target, where): a GET redirect kept for the next requests
        self._line = bytearray(_LINE)  # header lines are read here: no allocation per line
        self._byte = bytearray(1)

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass  # already broken: closing is best effort
        self._sock = None
        self._at = None
        self._last = None

    def _connect(self, host, port):
        """(socket, reused) for host:port: the open connection when it can
        carry another request, else a new verified TLS connection."""
        if self._sock is not None:
            last = self._last
            if self._at == (host, port) and self._keep and (last is None or last.remaining == 0):
                return self._sock, True
            self.close()
        if not self.cas:
            raise ConfigError("no CA certificate to verify %s with: set 'ca' in mpota.json" % host)
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        for i, der in enumerate(self.cas):
            try:
                ctx.load_verify_locations(der)  # each call adds to the trusted chain
            except ValueError as e:
                raise ConfigError("CA certificate %d of %d is refused by mbedTLS (%s): replace "
                                  "the CA file" % (i + 1, len(self.cas), e))
        raw = None
        try:
            addr = socket.getaddrinfo(host, port)[0][-1]
            raw = socket.socket()
            raw.settimeout(self.stall_s)
            raw.connect(addr)
        except (OSError, IndexError) as e:  # IndexError: the name resolved to no address
            if raw is not None:
                raw.close()  # an ESP32 has few sockets: never leave one to the GC
            raise TransportError("cannot connect to %s: %s" % (_hostport(host, port), e))
        try:
            sock = ctx.wrap_socket(raw, server_hostname=host)
        except ValueError as e:
            # mbedTLS reports a failed certificate check (chain, name, dates) as ValueError
            raw.close()
            raise TLSError("%s is not trusted: %s; pin the CA that signs its certificate "
                           "('ca' in mpota.json) or use the host name it is issued for"
                           % (_hostport(host, port), _tls_reason(e)))
        except OSError as e:
            # EOF, reset, timeout, not TLS at all: the handshake was cut short
            raw.close()
            raise TransportError("TLS handshake with %s cut short: %s"
                                 % (_hostport(host, port), e.args[1] if len(e.args) > 1 else e))
        self._sock, self._at, self._keep, self._last = sock, (host, port), True, None
        return sock, False

    def _readline(self, sock):
        # (length, goes on): one byte at a time from TLS's decrypted buffer into _line
        line, byte = self._line, self._byte
        n = 0
        while n < _LINE:
            if not sock.readinto(byte):
                return n, False
            line[n] = byte[0]
            n += 1
            if byte[0] == 10:
                return n, False
        return n, True

    def _header_line(self, sock, budget, where):
        n, more = self._readline(sock)
        if not more and (n == 0 or self._line[n - 1] != 10):
            raise TransportError("%s closed the connection in the headers" % _where_text(where))
        if n > budget:
            raise DownloadError("the response headers from %s are longer than %d bytes"
                                % (_where_text(where), _HEAD_MAX))
        return n, more

    def _head(self, sock, where):
        """(status, headers) of the response; only the headers in _KEEP are kept."""
        n, more = self._readline(sock)
        if n == 0:
            raise TransportError("%s closed the connection without answering"
                                 % _where_text(where))
        parts = bytes(self._line[:n]).split(None, 2)
        if more or len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise DownloadError("not an HTTP response from %s: %r"
                                % (_where_text(where), bytes(self._line[:min(n, 40)])))
        if parts[0] == b"HTTP/1.0":
            self._keep = False  # HTTP/1.0 closes after the response
        try:
            status = int(parts[1])
        except ValueError:
            raise DownloadError("bad HTTP status %r from %s" % (parts[1][:10], _where_text(where)))
        headers = {}
        budget = _HEAD_MAX
        line = self._line
        while True:
            n, more = self._header_line(sock, budget, where)
            budget -= n
            if not more and n <= 2 and line[0] in (10, 13):
                return status, headers
            colon = line.find(b":", 0, n)
            name = bytes(line[:colon]).strip().lower() if colon > 0 else b""
            value = bytes(line[colon + 1:n]) if name in _KEEP else None
            while more:  # the rest of a long line: kept only for a header the agent reads
                n, more = self._header_line(sock, budget, where)
                budget -= n
                if value is not None:
                    value += bytes(line[:n])
            if value is not None:
                try:
                    headers[name.decode()] = value.decode().strip()
                except ValueError:
                    raise DownloadError("bad %s header from %s" % (name, _where_text(where)))

    def _send(self, sock, method, where, headers, body):
        head = ("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: mpota\r\nAccept-Encoding: identity\r\n"
                % (method, where[2], _hostport(where[0], where[1])))
        for k, v in headers.items():
            head += "%s: %s\r\n" % (k, v)
        if body is not None:
            head += "Content-Length: %d\r\n" % len(body)
        sock.write((head + "\r\n").encode())
        if body:
            sock.write(body)

    def _exchange(self, method, where, headers, body):
        """One request and its response head, on the open connection if it can take it."""
        for _ in range(2):
            sock, reused = self._connect(where[0], where[1])
            try:
                self._send(sock, method, where, headers, body)
                status, hdrs = self._head(sock, where)
                r = Response(sock, status, hdrs, where, method)
                break
            except DownloadError as e:  # a TransportError too
                self.close()  # the stream is somewhere inside a response
                if not (reused and e.retryable):
                    raise
            except OSError as e:
                self.close()
                if not reused:
                    raise TransportError("connection to %s broke: %s" % (_where_text(where), e))
            # the server had closed the idle keep-alive connection: once more, fresh
        if r.remaining is None or "close" in hdrs.get("connection", "").lower():
            self._keep = False
        self._last = r
        return r

    def _drop(self, r):
        """Read and forget a small body so the connection can carry the next request."""
        if r.remaining is None or r.remaining > _DISCARD:
            self.close()
            return
        mv = memoryview(self._line)
        try:
            while r.remaining:
                r.readinto(mv)
        except TransportError:
            self.close()

    def _where(self, target):
        if "://" in target or self.base is None:
            if "://" not in target:
                raise DownloadError("%s is not an https:// URL and no mpota server is configured "
                                    "('server' in mpota.json)" % short(target))
            return split_url(target)
        return self.base[0], self.base[1], self.base[2] + target

    def _follow(self, where, location):
        host, port, path = where
        if location.startswith("//"):
            location = "https:" + location
        if ":" in location.split("/", 1)[0]:  # has a scheme
            if location[:8].lower() != "https://":
                raise DownloadError("refusing the redirect from %s to %s: only https:// is "
                                    "followed" % (_where_text(where), short(location)))
            return split_url(location)
        path = path.split("?", 1)[0]
        if location.startswith("?"):
            return host, port, path + location
        if not location.startswith("/"):
            location = path[:path.rfind("/") + 1] + location
        return host, port, _dots(location)

    def _final(self, r):
        if 200 <= r.status < 300:
            coding = r.headers.get("content-encoding", "identity").lower()
            if coding != "identity":
                self.close()
                raise DownloadError("%s is sent with Content-Encoding %s although the agent asks "
                                    "for identity: turn compression off for it"
                                    % (r.url(), coding[:20]))
            if r.chunked:
                self.close()
                raise DownloadError("%s is sent chunked, which the agent does not read: serve it "
                                    "with a Content-Length" % r.url())
        return r

    def request(self, method, target, headers=None, body=None):
        """Send a request and return its Response, following redirects.

        target is a path under the base URL or an absolute https:// URL.  A
        GET that was redirected goes straight to the redirect's target next
        time, until that target stops answering 2xx (an expired signed URL)."""
        headers = headers or {}
        moved = self._moved
        if moved is not None and moved[0] == target and method == "GET":
            try:
                r = self._exchange(method, moved[1], headers, body)
            except TransportError:
                self._moved = None  # the target does not answer: the original URL may send
                raise  # elsewhere next time (a drop in a body keeps the target)
            if 200 <= r.status < 300:
                return self._final(r)
            self._moved = None  # back to the original URL for a fresh redirect
            self._drop(r)
        first = where = self._where(target)
        for _ in range(self.redirects + 1):
            r = self._exchange(method, where, headers, body)
            location = r.headers.get("location")
            if r.status not in _MOVED or location is None:
                if where is not first and method == "GET" and 200 <= r.status < 300:
                    self._moved = (target, where)
                return self._final(r)
            self._drop(r)
            if r.status == 303 or (method == "POST" and r.status in (301, 302)):
                method, body = "GET", None
            where = self._follow(where, location)
        self.close()
        raise DownloadError("more than %d redirects from %s (the last to %s)"
                            % (self.redirects, _where_text(first), _where_text(where)))

    def expect(self, response, *ok):
        """The response if its status is one of ok; else a DownloadError
        (TransportError for a passing fault) naming the status and the URL."""
        if response.status in ok:
            return response
        self._drop(response)
        status = response.status
        meaning = _MEANING.get(status)
        if meaning is None:
            meaning = "server error: will retry later" if status >= 500 else "unexpected answer"
        message = "HTTP %d: %s (%s)" % (status, meaning, response.url())
        if status >= 500 or status in (408, 429):
            raise TransportError(message, status)
        raise DownloadError(message, status)
