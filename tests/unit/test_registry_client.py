"""cfsboot's own registry client (oci/registry.py, registryhttp.py) against an in-process
registry (cfstest.fakeregistry): what it requests, auth, redirects, keep-alive, platform
selection, media types, and a one-line error for each way a registry can fail."""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfsboot.errors import CfsbootError
from cfsboot.image.importer import fetch_config, import_image, opened
from cfsboot.oci.blobs import MAX_MANIFEST
from cfsboot.oci.reference import parse
from cfsboot.oci.registry import registry_name
from cfsboot.oci.streams import ReadAhead
from cfstest.fakeregistry import REPOSITORY, Config, FakeRegistry
from cfstest.ocibuild import Compression, Descriptor, Entry, Layout, canonical_json, tar_chunks
from cfstest.ocirepo import base_layer, make_repo

T = 1700000000
TLS = Path(__file__).resolve().parent.parent / "data/registry-tls"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture(autouse=True)
def _native(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The native client whatever this machine's containers configuration says, and no
    auth file of the user running the tests."""
    monkeypatch.setenv("CFSBOOT_REGISTRY_CLIENT", "native")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)


def _layers(version: str) -> list[list[Entry]]:
    return [
        [*base_layer(T), Entry("usr/bin/tool", data=b"tool\n" * 100, mode=0o755, mtime=T)],
        [Entry("usr/lib/os-release", data=f"VERSION_ID={version}\n".encode(), mtime=T)],
    ]


def _image(
    path: Path, version: str = "1", arch: str = "amd64", tag: str | None = "latest"
) -> tuple[Layout, Descriptor]:
    """An OCI layout: a gzip layer and a zstd layer; (layout, manifest descriptor)."""
    out = Layout(path)
    descs = [
        out.add_layer(tar_chunks(layer), c)
        for layer, c in zip(_layers(version), (Compression.GZIP, Compression.ZSTD), strict=True)
    ]
    return out, out.add_image(descs, arch=arch, tag=tag)


def _blob_digests(layout: Path, manifest: str) -> list[str]:
    doc = json.loads((layout / "blobs/sha256" / manifest[7:]).read_bytes())
    return [doc["config"]["digest"], *(d["digest"] for d in doc["layers"])]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeRegistry, Path, str]]:
    layout, mdesc = _image(tmp_path / "layout")
    with FakeRegistry() as reg:
        reg.add_layout(layout.path)
        yield reg, layout.path, mdesc.digest


def _error(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(CfsbootError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_import_is_the_layouts_image_on_one_connection(
    served: tuple[FakeRegistry, Path, str], tmp_path: Path
) -> None:
    reg, layout, manifest = served
    got = import_image(reg.ref("latest"), None, tls_verify=False)
    want = import_image(f"oci:{layout}:latest", None)
    assert (got.image_digest, got.manifest_digest, got.config_digest) == (
        want.image_digest,
        want.manifest_digest,
        want.config_digest,
    )
    blobs = _blob_digests(layout, manifest)
    assert reg.paths() == [
        f"/v2/{REPOSITORY}/manifests/latest",
        *(f"/v2/{REPOSITORY}/blobs/{d}" for d in blobs),
    ]
    assert reg.requests[0].headers["Accept"] == (
        "application/vnd.oci.image.manifest.v1+json, "
        "application/vnd.docker.distribution.manifest.v2+json, "
        "application/vnd.oci.image.index.v1+json, "
        "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    assert {r.connection for r in reg.requests} == {1}  # kept alive
    assert reg.connections == 1


def test_a_kept_alive_connection_the_server_closed_is_retried(
    served: tuple[FakeRegistry, Path, str],
) -> None:
    reg, layout, manifest = served
    reg.config.drop_idle = True
    got = import_image(reg.ref("latest"), None, tls_verify=False)
    assert got.image_digest == import_image(f"oci:{layout}", None).image_digest
    assert len(reg.paths()) == 4  # each asked once, each on a connection of its own
    assert sorted(r.connection for r in reg.requests) == [1, 2, 3, 4]


def test_layers_the_repository_has_are_never_requested(
    served: tuple[FakeRegistry, Path, str], tmp_path: Path
) -> None:
    reg, layout, manifest = served
    repo = make_repo(tmp_path / "repo")
    first = import_image(reg.ref("latest"), repo, tls_verify=False)
    reg.requests.clear()
    _, v2 = _image(layout, "2", tag="v2")  # the same bottom layer, another top one
    reg.add_layout(layout)
    second = import_image(reg.ref("v2"), repo, tls_verify=False)
    assert second.layers[0] == first.layers[0] and second.layers[1] != first.layers[1]
    config, _, top = _blob_digests(layout, v2.digest)
    assert reg.paths() == [
        f"/v2/{REPOSITORY}/manifests/v2",
        f"/v2/{REPOSITORY}/blobs/{config}",
        f"/v2/{REPOSITORY}/blobs/{top}",
    ]
    assert (second.layers_read, second.layers_reused) == (1, 1)


def test_fetch_config_reads_manifest_and_config_only(
    served: tuple[FakeRegistry, Path, str],
) -> None:
    reg, layout, manifest = served
    config = _blob_digests(layout, manifest)[0]
    digest, parsed = fetch_config(reg.ref("latest"), tls_verify=False)
    assert digest == config and parsed.architecture == "amd64"
    assert reg.paths() == [
        f"/v2/{REPOSITORY}/manifests/latest",
        f"/v2/{REPOSITORY}/blobs/{config}",
    ]


def test_pinned_digest_is_requested_and_checked(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, layout, manifest = served
    assert import_image(reg.ref(manifest), None, tls_verify=False).manifest_digest == manifest
    assert reg.paths()[0] == f"/v2/{REPOSITORY}/manifests/{manifest}"
    other = "sha256:" + "0" * 64
    reg.blobs[other] = reg.blobs[manifest]  # the registry serves other bytes than asked for
    assert _error(import_image, reg.ref(other), None, tls_verify=False) == (
        f"{reg.ref(other)}: manifest digest mismatch: expected {other}, got {manifest}"
    )


def test_docker_content_digest_must_be_the_manifests(
    served: tuple[FakeRegistry, Path, str],
) -> None:
    reg, _, manifest = served
    wrong = "sha256:" + "1" * 64
    reg.config.docker_digest["latest"] = wrong
    assert _error(import_image, reg.ref("latest"), None, tls_verify=False) == (
        f"{reg.ref('latest')}: manifest digest mismatch: registry says {wrong}, got {manifest}"
    )


def test_bearer_token_anonymous(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    reg.config.auth = "bearer"
    fetch_config(reg.ref("latest"), tls_verify=False)
    token = [r for r in reg.requests if r.path.startswith("/token")]
    assert len(token) == 1 and "Authorization" not in token[0].headers
    assert reg.token_queries == [{"scope": f"repository:{REPOSITORY}:pull", "service": "fake"}]
    assert [r.headers.get("Authorization") for r in reg.requests if r.path.startswith("/v2/")] == [
        None,  # the challenge
        "Bearer t0ken",
        "Bearer t0ken",
    ]


def _auth_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, auth: str) -> None:
    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps({"auths": {host: {"auth": base64.b64encode(auth.encode()).decode()}}})
    )
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))


def test_bearer_token_with_the_auth_files_user(
    served: tuple[FakeRegistry, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, _, _ = served
    reg.config.auth = "bearer"
    reg.config.users = {"alice": "s3cret"}
    assert "needs credentials" in _error(fetch_config, reg.ref("latest"), tls_verify=False)
    _auth_file(tmp_path, monkeypatch, reg.address, "alice:wrong")
    assert _error(fetch_config, reg.ref("latest"), tls_verify=False) == (
        f"registry {reg.address} refused the credentials for {REPOSITORY} (401); "
        "log in (skopeo login / podman login) or set REGISTRY_AUTH_FILE"
    )
    _auth_file(tmp_path, monkeypatch, reg.address, "alice:s3cret")
    reg.requests.clear()
    fetch_config(reg.ref("latest"), tls_verify=False)
    token = [r for r in reg.requests if r.path.startswith("/token")]
    assert (
        token[0].headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    )


def test_basic_auth(
    served: tuple[FakeRegistry, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, _, _ = served
    reg.config.auth = "basic"
    reg.config.users = {"bob": "pw"}
    assert _error(fetch_config, reg.ref("latest"), tls_verify=False) == (
        f"registry {reg.address} needs credentials for {REPOSITORY} (401); "
        "log in (skopeo login / podman login) or set REGISTRY_AUTH_FILE"
    )
    _auth_file(tmp_path, monkeypatch, f"http://{reg.address}", "bob:pw")
    reg.requests.clear()
    fetch_config(reg.ref("latest"), tls_verify=False)
    basic = "Basic " + base64.b64encode(b"bob:pw").decode()
    assert [r.headers.get("Authorization") for r in reg.requests] == [None, basic, basic]


def test_forbidden(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    reg.config.fail[f"/v2/{REPOSITORY}/manifests/latest"] = 403
    assert _error(fetch_config, reg.ref("latest"), tls_verify=False).startswith(
        f"registry {reg.address} needs credentials for {REPOSITORY} (403); log in"
    )


def test_blobs_follow_a_redirect_without_the_registrys_credentials(
    served: tuple[FakeRegistry, Path, str], tmp_path: Path
) -> None:
    reg, layout, manifest = served
    reg.config.auth = "bearer"
    reg.config.redirect_blobs = True
    got = import_image(reg.ref("latest"), None, tls_verify=False)
    assert got.image_digest == import_image(f"oci:{layout}", None).image_digest
    storage = [r for r in reg.requests if r.server == "storage"]
    assert [r.path for r in storage] == [
        f"/storage/{d}?sig=x" for d in _blob_digests(layout, manifest)
    ]
    assert all("Authorization" not in r.headers for r in storage)
    assert len({r.connection for r in storage}) == 1  # the storage host's connection kept too


def test_too_many_redirects(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    reg.config.redirect_loop = True
    assert _error(fetch_config, reg.ref("latest"), tls_verify=False).startswith(
        f"registry {reg.address}: too many redirects for /v2/{REPOSITORY}/blobs/sha256:"
    )


def _multiarch(tmp_path: Path, reg: FakeRegistry, list_type: str | None = None) -> dict[str, str]:
    """An index of an amd64 and an arm64 image under `multi`; config digest by arch."""
    configs = {}
    descs = []
    for arch in ("amd64", "arm64"):
        layout, mdesc = _image(tmp_path / "multi", arch, arch=arch, tag=None)
        descs.append(mdesc)
        configs[arch] = _blob_digests(layout.path, mdesc.digest)[0]
    digest = layout.add_image_index(descs, "multi").digest
    reg.add_layout(layout.path)
    if list_type:
        reg.config.content_type[digest] = list_type
    return configs


@pytest.mark.parametrize("list_type", [None, MT_DOCKER_LIST])
def test_manifest_list_picks_the_architecture(tmp_path: Path, list_type: str | None) -> None:
    with FakeRegistry() as reg:
        configs = _multiarch(tmp_path, reg, list_type)
        for arch in ("arm64", "amd64"):
            digest, config = fetch_config(reg.ref("multi"), arch=arch, tls_verify=False)
            assert (digest, config.architecture) == (configs[arch], arch)
        assert _error(fetch_config, reg.ref("multi"), arch="s390x", tls_verify=False) == (
            f"no image for architecture s390x in {reg.ref('multi')} (available: amd64, arm64); "
            "pick one with --arch"
        )


def test_docker_schema2_manifest(served: tuple[FakeRegistry, Path, str]) -> None:
    """A Docker v2s2 manifest naming the same blobs: the same image, its own digest."""
    reg, layout, manifest = served
    doc = json.loads(reg.blobs[manifest])
    doc["mediaType"] = MT_DOCKER_MANIFEST
    doc["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in doc["layers"]:
        layer["mediaType"] = layer["mediaType"].replace(
            "application/vnd.oci.image.layer.v1.tar+",
            "application/vnd.docker.image.rootfs.diff.tar.",
        )
    digest = reg.tag("v2s2", canonical_json(doc))
    got = import_image(reg.ref("v2s2"), None, tls_verify=False)
    assert got.manifest_digest == digest != manifest
    assert got.image_digest == import_image(f"oci:{layout}", None).image_digest
    assert got.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"


def test_schema1_is_refused(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    digest = reg.tag("old", b'{"schemaVersion":1,"name":"test/os","fsLayers":[]}')
    reg.config.content_type[digest] = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    assert _error(fetch_config, reg.ref("old"), tls_verify=False) == (
        "unsupported manifest media type 'application/vnd.docker.distribution.manifest.v1+json'"
    )


def test_not_found(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    assert _error(import_image, reg.ref("nope"), None, tls_verify=False) == (
        f"{reg.ref('nope')}: manifest nope not found in registry {reg.address}"
    )


def test_not_json(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    reg.tag("html", b"<html>hello</html>")
    assert _error(fetch_config, reg.ref("html"), tls_verify=False) == (
        f"{reg.ref('html')}: the registry's manifest html is not a JSON object"
    )


def test_absurd_manifest(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    reg.tag("big", b" " * (MAX_MANIFEST + 1))
    assert _error(fetch_config, reg.ref("big"), tls_verify=False) == (
        f"{reg.ref('big')}: manifest big is absurdly large "
        f"({MAX_MANIFEST + 1} bytes, limit {MAX_MANIFEST})"
    )


def test_truncated_blob(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, layout, manifest = served
    layer = _blob_digests(layout, manifest)[1]
    reg.config.truncate.add(layer)
    size = len(reg.blobs[layer])
    assert _error(import_image, reg.ref("latest"), None, tls_verify=False) == (
        f"{reg.ref('latest')}: blob {layer} is truncated: "
        f"the connection to {reg.address} closed {size - size // 2} bytes early"
    )


def test_closing_a_layer_stream_wakes_a_read_stalled_on_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or an error while a blob's transfer hangs: closing the layer's stream shuts
    the connection down, rather than wait out the client's 60 s timeout on its reader."""
    layout = Layout(tmp_path / "layout")
    big = Entry("usr/lib/big", data=random.Random(5).randbytes(8 << 20), mtime=T)
    layer = layout.add_layer(tar_chunks([*base_layer(T), big]), Compression.ZSTD)
    layout.add_image([layer], tag="latest")
    monkeypatch.setattr(ReadAhead, "PATIENCE", 0.1)
    with FakeRegistry(Config(stall={layer.digest})) as reg:
        reg.add_layout(layout.path)
        with opened(parse(reg.ref("latest")), None, tls_verify=False) as image:
            stream, _, _ = image.open_layer(image.layers[0])
            time.sleep(0.3)  # the read-ahead thread has the first half and waits for more
            start = time.monotonic()
            stream.close()
            assert time.monotonic() - start < 5


def test_layer_digest_mismatch(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, layout, manifest = served
    layer = _blob_digests(layout, manifest)[2]
    reg.blobs[layer] = reg.blobs[layer][:-1] + bytes([reg.blobs[layer][-1] ^ 1])
    assert _error(import_image, reg.ref("latest"), None, tls_verify=False).startswith(
        f"layer {layer} digest mismatch: expected {layer}, got sha256:"
    )


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _error(fetch_config, f"docker://127.0.0.1:{port}/a/b:1", tls_verify=False) == (
        f"cannot connect to registry 127.0.0.1:{port}: connection refused; is it running?"
    )


def test_plain_http_registry_asked_for_tls(served: tuple[FakeRegistry, Path, str]) -> None:
    reg, _, _ = served
    assert _error(fetch_config, reg.ref("latest")) == (
        f"registry {reg.address}: TLS handshake failed (WRONG_VERSION_NUMBER); a registry "
        "without TLS needs --src-tls-verify=false (or insecure in registries.conf)"
    )


def test_unknown_host() -> None:
    assert _error(fetch_config, "docker://no-such-host.invalid/a/b:1").startswith(
        "cannot resolve registry no-such-host.invalid: "
    )


HUB = "registry-1.docker.io"
PIN = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("ref", "fields"),
    [
        ("docker://debian", ("docker.io", HUB, "library/debian", None, None)),
        ("docker://docker.io/debian:trixie", ("docker.io", HUB, "library/debian", "trixie", None)),
        ("docker://quay.io/fedora/bootc:42", ("quay.io", "quay.io", "fedora/bootc", "42", None)),
        (f"docker://localhost:5000/os@{PIN}", ("localhost:5000", "localhost:5000", "os", None, PIN)),  # noqa: E501
        ("docker://example/os", ("docker.io", HUB, "example/os", None, None)),
    ],
)  # fmt: skip
def test_registry_name(ref: str, fields: tuple[str, str, str, str | None, str | None]) -> None:
    name = registry_name(parse(ref))
    assert (name.domain, name.host, name.repository, name.tag, name.digest) == fields


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("docker://Upper/Case", "docker://Upper/Case: invalid repository name 'Upper/Case'"),
        ("docker://x.io/os@md5:00", "docker://x.io/os@md5:00: 'md5:00' is not a digest"),
    ],
)
def test_registry_name_refuses(ref: str, message: str) -> None:
    assert _error(registry_name, parse(ref)).startswith(message)


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that speaks only TLS, with a certificate of its own: refused when
    verified, reached when trusted (SSL_CERT_FILE) and when not verified (plain HTTP is
    tried first, then TLS without verification, as with --src-tls-verify=false)."""
    layout, _ = _image(tmp_path / "layout")
    with FakeRegistry(tls=TLS) as reg:
        reg.add_layout(layout.path)
        reg.config.auth = "bearer"  # the token service is on https too
        assert _error(fetch_config, reg.ref("latest")).startswith(
            f"registry {reg.address}: TLS certificate not trusted ("
        )
        assert reg.requests == []
        config = fetch_config(reg.ref("latest"), tls_verify=False)
        assert [r.path for r in reg.requests][:2] == [
            f"/v2/{REPOSITORY}/manifests/latest",
            "/token?scope=repository%3Atest%2Fos%3Apull&service=fake",
        ]
        monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "cert.pem"))
        assert fetch_config(reg.ref("latest")) == config
