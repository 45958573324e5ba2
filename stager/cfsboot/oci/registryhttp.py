"""HTTP for the registry client (registry.py): kept-alive connections, auth, redirects.

Connections are kept alive per (scheme, host) and reused once an answer was read to
its end; a kept-alive connection the server closed meanwhile is retried once. A
redirect to another host (a blob in object storage) goes there without the
registry's credentials. Auth answers the registry's 401 challenge: Bearer (a token
from the realm, anonymous or with the auth file's user and password) or Basic.
Without TLS verification (--src-tls-verify=false, or an `insecure` registry), plain
HTTP is tried first and TLS without verification when the registry only speaks TLS.
Every network failure is a one-line error naming the host.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import ssl
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, NoReturn

from cfsboot.errors import die

if TYPE_CHECKING:
    from cfsboot.oci.registry import RegistryName

MAX_REDIRECTS = 5
MAX_TOKEN = 1 << 20
TIMEOUT = 60.0  # seconds a connect or a read may take
USER_AGENT = "cfsboot"
REDIRECTS = (301, 302, 303, 307, 308)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme in lower case, parameters) of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        k.lower(): q if q or not u else u
        for k, q, u in re.findall(r'([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|([^,\s]*))', rest)
    }
    return scheme.lower(), params


def _net_error(e: BaseException, host: str) -> NoReturn:
    """A one-line error for a network failure reaching `host`."""
    if isinstance(e, socket.gaierror):
        die(f"cannot resolve registry {host}: {e.strerror or e}", hint="check the image name")
    if isinstance(e, ssl.SSLCertVerificationError):
        die(
            f"registry {host}: TLS certificate not trusted ({e.verify_message})",
            hint="for a test registry, pass --src-tls-verify=false",
        )
    if isinstance(e, ssl.SSLError):
        die(
            f"registry {host}: TLS handshake failed ({e.reason or e})",
            hint="a registry without TLS needs --src-tls-verify=false "
            "(or insecure in registries.conf)",
        )
    if isinstance(e, ConnectionRefusedError):
        die(f"cannot connect to registry {host}: connection refused", hint="is it running?")
    if isinstance(e, TimeoutError | socket.timeout):
        die(f"registry {host} did not answer within {TIMEOUT:.0f} s")
    if isinstance(e, http.client.IncompleteRead):
        die(f"registry {host} closed the connection early (truncated answer)")
    die(f"registry {host}: {e.__class__.__name__}: {e}")


class Client:
    """One repository of one registry: requests on kept-alive connections, auth."""

    def __init__(
        self,
        name: RegistryName,
        *,
        tls_verify: bool = True,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.tls_verify = tls_verify
        # Without verification: plain HTTP first, TLS (unverified) when the registry asks for it.
        self.scheme = "https" if tls_verify else "http"
        self.scheme_known = tls_verify
        self.credentials = credentials
        self.authorization: str | None = None
        self.idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self.made: list[http.client.HTTPConnection] = []
        # Layers may be read from several threads at once: the pool is shared.
        self.lock = threading.Lock()

    # -- connections

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        with self.lock:
            pool = self.idle.get((scheme, netloc))
            if pool:
                return pool.pop()
        conn: http.client.HTTPConnection
        if scheme == "https":
            ctx = ssl.create_default_context()
            if not self.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=ctx)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=TIMEOUT)
        with self.lock:
            self.made.append(conn)
        return conn

    def release(
        self, scheme: str, netloc: str, conn: http.client.HTTPConnection, keep: bool
    ) -> None:
        """Back to the pool after its answer was read to the end (keep), else closed."""
        if keep:
            with self.lock:
                self.idle.setdefault((scheme, netloc), []).append(conn)
        else:
            conn.close()

    def _send(
        self, scheme: str, netloc: str, path: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One request; a kept-alive connection the server closed meanwhile is retried once."""
        for attempt in (0, 1):
            conn = self._connection(scheme, netloc)
            reused = conn.sock is not None
            try:
                conn.request("GET", path, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if reused and attempt == 0:
                    continue
                raise
        raise AssertionError("unreachable")

    def _send_registry(
        self, path: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A request to the registry itself; finds out its scheme when TLS is not verified."""
        if self.scheme_known:
            return self._send(self.scheme, self.name.host, path, headers)
        try:
            conn, resp = self._send("http", self.name.host, path, headers)
        except (http.client.BadStatusLine, ConnectionResetError, BrokenPipeError):
            resp = None
        # A TLS-only server answers plain HTTP with a 400 that is no registry's answer.
        if resp is not None and not (
            resp.status == 400 and resp.getheader("Docker-Distribution-Api-Version") is None
        ):
            self.scheme_known = True
            return conn, resp
        if resp is not None:
            conn.close()
        self.scheme, self.scheme_known = "https", True
        return self._send("https", self.name.host, path, headers)

    # -- requests

    def get(self, path: str, accept: str | None = None) -> Response:
        """GET a registry path (/v2/...), through auth challenges and redirects."""
        scheme, netloc, target = self.scheme, self.name.host, path
        authenticated = False
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"User-Agent": USER_AGENT}
            if accept:
                headers["Accept"] = accept
            at_registry = netloc == self.name.host
            if at_registry and self.authorization:
                headers["Authorization"] = self.authorization
            try:
                if at_registry and scheme == self.scheme:
                    conn, resp = self._send_registry(target, headers)
                    scheme = self.scheme
                else:
                    conn, resp = self._send(scheme, netloc, target, headers)
            except (OSError, http.client.HTTPException) as e:
                _net_error(e, netloc)
            if resp.status == 401 and at_registry and not authenticated:
                challenge = resp.getheader("WWW-Authenticate") or ""
                self._drain(scheme, netloc, conn, resp)
                self._authenticate(challenge)
                authenticated = True
                continue
            if resp.status in REDIRECTS:
                location = resp.getheader("Location")
                self._drain(scheme, netloc, conn, resp)
                if not location:
                    die(f"registry {netloc} redirected {target} nowhere")
                url = urllib.parse.urlsplit(
                    urllib.parse.urljoin(f"{scheme}://{netloc}{target}", location)
                )
                if url.scheme not in ("http", "https") or not url.netloc:
                    die(f"registry {netloc} redirected {target} to {location!r}")
                scheme, netloc = url.scheme, url.netloc
                target = url.path + (f"?{url.query}" if url.query else "")
                continue
            return Response(self, scheme, netloc, conn, resp)
        die(f"registry {self.name.host}: too many redirects for {path} (more than {MAX_REDIRECTS})")

    def _drain(
        self,
        scheme: str,
        netloc: str,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
    ) -> None:
        try:
            resp.read(MAX_TOKEN)
        except (OSError, http.client.HTTPException):
            conn.close()
            return
        self.release(scheme, netloc, conn, resp.isclosed() and not resp.will_close)

    def _authenticate(self, header: str) -> None:
        """Answer the registry's 401 challenge: a Bearer token or Basic credentials."""
        scheme, params = _challenge(header)
        basic = None
        if self.credentials is not None:
            user, password = self.credentials
            basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if scheme == "basic":
            if basic is None:
                self._unauthorized(401)
            self.authorization = basic
            return
        if scheme != "bearer" or not params.get("realm"):
            die(f"registry {self.name.host} asks for authentication cfsboot cannot do ({header!r})")
        self.authorization = f"Bearer {self._token(params, basic)}"

    def _token(self, params: dict[str, str], basic: str | None) -> str:
        """A token from the Bearer challenge's realm (anonymous, or with `basic`)."""
        query = {"scope": params.get("scope") or f"repository:{self.name.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme not in ("http", "https") or not realm.netloc:
            die(f"registry {self.name.host}: unusable token service {params['realm']!r}")
        target = (
            (realm.path or "/")
            + "?"
            + "&".join(filter(None, [realm.query, urllib.parse.urlencode(query)]))
        )
        headers = {"User-Agent": USER_AGENT}
        if basic is not None:
            headers["Authorization"] = basic
        try:
            conn, resp = self._send(realm.scheme, realm.netloc, target, headers)
            body = resp.read(MAX_TOKEN + 1)
        except (OSError, http.client.HTTPException) as e:
            _net_error(e, realm.netloc)
        self.release(realm.scheme, realm.netloc, conn, resp.isclosed() and not resp.will_close)
        if resp.status in (401, 403):
            self._unauthorized(resp.status)
        if resp.status != 200 or len(body) > MAX_TOKEN:
            die(f"token service {realm.netloc} answered {resp.status} {resp.reason}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            die(f"token service {realm.netloc} gave no token")
        return token

    def _unauthorized(self, status: int) -> None:
        what = "refused the credentials" if self.credentials else "needs credentials"
        die(
            f"registry {self.name.host} {what} for {self.name.repository} ({status})",
            hint="log in (skopeo login / podman login) or set REGISTRY_AUTH_FILE",
        )

    def check_status(self, resp: Response, what: str) -> None:
        status = resp.resp.status
        if status == 200:
            return
        resp.close()
        if status in (401, 403):
            self._unauthorized(status)
        if status == 404:
            die(f"{self.name.text}: {what} not found in registry {self.name.host}")
        die(f"registry {self.name.host} answered {status} {resp.resp.reason} for {what}")

    # -- documents and blobs

    def close(self) -> None:
        for conn in self.made:
            conn.close()
        self.idle.clear()


class Response:
    """An answer whose connection goes back to the pool once its body was read to the end."""

    def __init__(
        self,
        client: Client,
        scheme: str,
        netloc: str,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
    ) -> None:
        self.client, self.scheme, self.netloc = client, scheme, netloc
        self.conn, self.resp = conn, resp
        self.open = True

    def readinto(self, b: Any, what: str) -> int:
        try:
            n = self.resp.readinto(b)
        except http.client.IncompleteRead as e:
            self.close()
            die(
                f"{self.client.name.text}: {what} is truncated: "
                f"the connection to {self.netloc} closed early ({len(e.partial)} more bytes)"
            )
        except (OSError, http.client.HTTPException) as e:
            self.close()
            _net_error(e, self.netloc)
        if not n and len(b):
            left = self.resp.length  # http.client stops quietly when a connection closes early
            if left:
                self.close()
                die(
                    f"{self.client.name.text}: {what} is truncated: "
                    f"the connection to {self.netloc} closed {left} bytes early"
                )
            self.finish()
        return n

    def read_small(self, limit: int, what: str) -> bytes:
        length = self.resp.length
        if length is not None and length > limit:
            self.close()
            die(
                f"{self.client.name.text}: {what} is absurdly large ({length} bytes, limit {limit})"
            )
        # As large as the answer says it is (zeroing the limit's 4 MiB costs a page fault
        # a page); one byte more to notice an answer longer than its Content-Length.
        buf = bytearray((limit if length is None else length) + 1)
        view, got = memoryview(buf), 0
        while got <= limit and (n := self.readinto(view[got:], what)):
            got += n
        if got > limit:
            self.close()
            die(f"{self.client.name.text}: {what} is absurdly large (over {limit} bytes)")
        self.finish()
        return bytes(buf[:got])

    def finish(self) -> None:
        if self.open:
            self.open = False
            keep = self.resp.isclosed() and not self.resp.will_close
            self.client.release(self.scheme, self.netloc, self.conn, keep)

    def close(self) -> None:
        """Give up the answer midway: its connection cannot serve another request."""
        if self.open:
            self.open = False
            self.conn.close()

    def abort(self) -> None:
        """Wake a read of the body blocked in another thread (a stalled registry): the
        socket is shut down, so that read fails at once instead of at the timeout."""
        sock = self.conn.sock
        if self.open and sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile: nothing is blocked on it


class Body(io.RawIOBase):
    def __init__(self, resp: Response, what: str) -> None:
        self.r = resp
        self.what = what

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self.r.readinto(b, self.what)

    def close(self) -> None:
        if self.r.open:
            self.r.close()
        super().close()

    def abort(self) -> None:
        self.r.abort()


class BufferedBody(io.BufferedReader):
    """A Body read through a buffer, which another thread can still abort()."""

    def __init__(self, body: Body, buffer_size: int) -> None:
        super().__init__(body, buffer_size)
        self.body = body

    def abort(self) -> None:
        self.body.abort()
