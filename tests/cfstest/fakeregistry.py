"""An in-process registry (OCI distribution API) for unit tests of cfsboot's registry client.

It serves the blobs of OCI layouts under one repository name: manifests and indexes
by digest and by the tags added, every other blob under /v2/NAME/blobs/. What a test
needs of a real registry is switchable: auth (Bearer with a token service, with or
without user and password; Basic), blobs redirected to a second server (object
storage), a blob cut short, a body that is not what it says. Every request is noted
(method, path, headers, the connection it came on) for the test to assert on.

    with FakeRegistry() as reg:
        reg.add_layout(layout_path)
        ref = reg.ref("latest")        # docker://127.0.0.1:PORT/test/os:latest
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

REPOSITORY = "test/os"
TOKEN = "t0ken"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    connection: int  # which TCP connection (in order of acceptance)
    server: str  # "registry" or "storage"


@dataclass
class Config:
    auth: str | None = None  # None, "bearer" or "basic"
    users: dict[str, str] = field(default_factory=dict)  # user -> password
    redirect_blobs: bool = False  # blobs: a 307 to the storage server
    truncate: set[str] = field(default_factory=set)  # blob digests sent short
    stall: set[str] = field(default_factory=set)  # blob digests that stop halfway and hang
    content_type: dict[str, str] = field(default_factory=dict)  # digest -> served type
    docker_digest: dict[str, str] = field(default_factory=dict)  # tag -> Docker-Content-Digest
    redirect_loop: bool = False
    fail: dict[str, int] = field(default_factory=dict)  # path -> status to answer
    drop_idle: bool = False  # close each connection after an answer, without saying so


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: FakeRegistry, role: str, tls: Path | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner
        self.role = role
        if tls is not None:  # a handshake that fails (plain HTTP) drops that connection
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls / "cert.pem", tls / "key.pem")
            self.socket = ctx.wrap_socket(self.socket, server_side=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.owner.lock:
            self.server.owner.connections += 1
            self.conn_id = self.server.owner.connections

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.owner.config.drop_idle:
            self.close_connection = True  # as a server whose keep-alive timeout ran out

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        owner = self.server.owner
        owner.requests.append(
            Request(self.path, dict(self.headers.items()), self.conn_id, self.server.role)
        )
        url = urllib.parse.urlsplit(self.path)
        if url.path in owner.config.fail:
            self._send(owner.config.fail[url.path], b"{}")
            return
        if self.server.role == "storage":
            self._blob(url.path.rsplit("/", 1)[-1])
            return
        if url.path == "/token":
            self._token(urllib.parse.parse_qs(url.query))
            return
        if not self._authorized():
            return
        prefix = f"/v2/{REPOSITORY}/"
        if not url.path.startswith(prefix):
            self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
            return
        kind, _, ref = url.path[len(prefix) :].partition("/")
        if kind == "manifests":
            self._manifest(ref)
        elif kind == "blobs" and owner.config.redirect_loop:
            self._send(302, headers={"Location": self.path})
        elif kind == "blobs" and owner.config.redirect_blobs:
            self._send(307, headers={"Location": f"{owner.storage_url}/storage/{ref}?sig=x"})
        elif kind == "blobs":
            self._blob(ref)
        else:
            self._send(404)

    def _authorized(self) -> bool:
        config = self.server.owner.config
        given = self.headers.get("Authorization", "")
        if config.auth is None:
            return True
        if config.auth == "bearer":
            if given == f"Bearer {TOKEN}":
                return True
            challenge = (
                f'Bearer realm="{self.server.owner.url}/token",service="fake",'
                f'scope="repository:{REPOSITORY}:pull"'
            )
        else:
            if given.startswith("Basic ") and self._user_ok(given):
                return True
            challenge = 'Basic realm="fake"'
        self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
        return False

    def _user_ok(self, header: str) -> bool:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return self.server.owner.config.users.get(user) == password

    def _token(self, query: dict[str, list[str]]) -> None:
        owner = self.server.owner
        given = self.headers.get("Authorization")
        if owner.config.users and not (given and self._user_ok(given)):
            self._send(401, b"{}")
            return
        owner.token_queries.append({k: v[0] for k, v in query.items()})
        self._send(200, json.dumps({"token": TOKEN}).encode())

    def _manifest(self, ref: str) -> None:
        owner = self.server.owner
        digest = owner.tags.get(ref, ref)
        data = owner.blobs.get(digest)
        if data is None:
            self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return
        served = owner.config.docker_digest.get(ref, digest)
        try:
            own = json.loads(data).get("mediaType", "")
        except ValueError:
            own = "text/html"
        mt = owner.config.content_type.get(digest) or own
        self._send(200, data, {"Content-Type": mt, "Docker-Content-Digest": served})

    def _blob(self, digest: str) -> None:
        owner = self.server.owner
        data = owner.blobs.get(digest)
        if data is None:
            self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return
        if digest in owner.config.truncate or digest in owner.config.stall:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            if digest in owner.config.stall:
                self.wfile.flush()
                owner.stopping.wait(30)  # the rest never comes while the registry runs
            self.close_connection = True
            return
        self._send(200, data, {"Content-Type": "application/octet-stream"})


class FakeRegistry:
    """tls: a directory with cert.pem and key.pem: the registry speaks only TLS."""

    def __init__(self, config: Config | None = None, tls: Path | None = None) -> None:
        self.config = config or Config()
        self.tls = tls is not None
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}
        self.requests: list[Request] = []
        self.token_queries: list[dict[str, str]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = _Server(self, "registry", tls)
        self.storage = _Server(self, "storage")
        self.threads = [
            threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True)
            for s in (self.server, self.storage)
        ]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def storage_url(self) -> str:
        # Another host name for the same machine: credentials must not follow a redirect.
        return f"http://localhost:{self.storage.server_address[1]}"

    def ref(self, tag_or_digest: str) -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"docker://{self.address}/{REPOSITORY}{sep}{tag_or_digest}"

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_layout(self, layout: Path) -> None:
        """Every blob of an OCI layout, and its index.json's tags."""
        for blob in (layout / "blobs/sha256").iterdir():
            self.blobs[f"sha256:{blob.name}"] = blob.read_bytes()
        index = json.loads((layout / "index.json").read_text())
        for d in index["manifests"]:
            tag = d.get("annotations", {}).get("org.opencontainers.image.ref.name")
            if tag:
                self.tags[tag] = d["digest"]

    def tag(self, tag: str, data: bytes) -> str:
        """Serve `data` as the manifest (or index) `tag` names; its digest."""
        digest = self.add_blob(data)
        self.tags[tag] = digest
        return digest

    def paths(self, server: str = "registry") -> list[str]:
        return [r.path for r in self.requests if r.server == server]

    def __enter__(self) -> FakeRegistry:
        for t in self.threads:
            t.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        for s in (self.server, self.storage):
            s.shutdown()
            s.server_close()
