"""A registry client (OCI distribution API, Docker Registry HTTP API v2) on http.client.

`docker://NAME` images are fetched without skopeo when nothing in the containers
configuration would make skopeo behave otherwise (registryconf.py decides; the HTTP
side, auth and connections, is registryhttp.py). The registry's documents are
served to the OCI layout reader (ocilayout.py) through a BlobSource, so that
platform selection, verification and layer description are the same code as for
`oci:` layouts: `index.json` is made up, naming the manifest the reference names (a
tag's as served, or the pinned digest, checked); a blob name is a GET of
/v2/NAME/manifests/DIGEST when an index served before names that digest, else of
/v2/NAME/blobs/DIGEST, streamed (never copied anywhere) into the verifying readers.
A layer the repository already has is never opened, so never fetched.

The manifest digest recorded is that of the manifest as the registry serves it (what
bootc reports as imageDigest). skopeo's copy into an OCI layout keeps an OCI
manifest byte for byte, so both paths record the same digest for OCI images; a
Docker schema 2 manifest is converted by skopeo (another digest) and kept as served
here. `upgrade --check` compares config digests, which are the same either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import BinaryIO

from cfsboot.errors import CfsbootError, die
from cfsboot.oci.blobs import MAX_MANIFEST, BlobSource, OpenedImage
from cfsboot.oci.documents import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    is_digest,
)
from cfsboot.oci.network import DOCKER_HUB
from cfsboot.oci.ocilayout import open_oci
from cfsboot.oci.reference import ImageRef, Transport
from cfsboot.oci.registryhttp import Body, BufferedBody, Client

ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
HUB_DOMAIN = "docker.io"
# The distribution spec's repository name components and tags.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class RegistryName:
    """A `docker://` reference as the registry API addresses it."""

    domain: str  # as containers/image names it (docker.io for Docker Hub), with its port
    host: str  # HOST[:PORT] connected to (registry-1.docker.io for Docker Hub)
    repository: str  # library/debian
    tag: str | None
    digest: str | None
    text: str  # the reference, for messages

    @property
    def reference(self) -> str:
        """What /v2/NAME/manifests/ is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def full(self) -> str:
        """DOMAIN/REPOSITORY[:TAG|@DIGEST], the name registries.conf and policy.json match."""
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{self.domain}/{self.repository}{suffix}"


def registry_name(ref: ImageRef) -> RegistryName:
    """Parse a `docker://` reference (containers/image's rules: a first component with a
    `.` or `:`, or `localhost`, is the registry; else Docker Hub, `library/` added)."""
    assert ref.transport is Transport.DOCKER
    text = str(ref)
    rest, at, digest = ref.path.removeprefix("//").partition("@")
    if at and not is_digest(digest):
        die(f"{text}: {digest!r} is not a digest cfsboot can verify (sha256:HEX)")
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            die(f"{text}: invalid tag {tag!r}")
    first, sep, path = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain = first
    else:
        domain, path = HUB_DOMAIN, rest
    if domain in (HUB_DOMAIN, "index.docker.io"):
        domain, host = HUB_DOMAIN, DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    else:
        host = domain
    if not path or not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        die(f"{text}: invalid repository name {path!r}", hint="lower-case letters, digits, . _ -")
    return RegistryName(domain, host, path, tag, digest or None, text)


def fetch_manifest(client: Client, reference: str) -> tuple[bytes, str, str]:
    """(bytes, media type, digest) of the manifest or index `reference` names,
    the digest checked when `reference` is one."""
    what = f"manifest {reference}"
    resp = client.get(f"/v2/{client.name.repository}/manifests/{reference}", ACCEPT)
    client.check_status(resp, what)
    data = resp.read_small(MAX_MANIFEST, what)
    alg = reference.partition(":")[0] if is_digest(reference) else "sha256"
    digest = f"{alg}:{hashlib.new(alg, data).hexdigest()}"
    served = resp.resp.getheader("Docker-Content-Digest")
    if is_digest(reference) and digest != reference:
        die(f"{client.name.text}: manifest digest mismatch: expected {reference}, got {digest}")
    if served and served.startswith(f"{alg}:") and served != digest:
        die(f"{client.name.text}: manifest digest mismatch: registry says {served}, got {digest}")
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        die(f"{client.name.text}: the registry's {what} is not a JSON object")
    mt = (resp.resp.getheader("Content-Type") or "").partition(";")[0].strip()
    if mt not in (*INDEX_TYPES, *MANIFEST_TYPES):
        own = doc.get("mediaType")
        if isinstance(own, str) and own:
            mt = own
        elif doc.get("schemaVersion") == 1:
            mt = "application/vnd.docker.distribution.manifest.v1+json"
        else:
            mt = MT_OCI_INDEX if "manifests" in doc else MT_OCI_MANIFEST
    return data, mt, digest


def fetch_blob(client: Client, digest: str) -> tuple[BinaryIO, int]:
    """A blob's bytes as they arrive (read in 1 MiB chunks), and its length (-1: unknown)."""
    resp = client.get(f"/v2/{client.name.repository}/blobs/{digest}")
    client.check_status(resp, f"blob {digest}")
    length = resp.resp.length
    return BufferedBody(Body(resp, f"blob {digest}"), 1 << 20), (-1 if length is None else length)


class RegistrySource(BlobSource):
    """A registry repository as an OCI layout holding the one image a reference names."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.where = client.name.text
        self.documents: dict[str, bytes] = {}
        self.manifests: set[str] = set()  # digests an index named: fetched as manifests
        data, mt, digest = fetch_manifest(client, client.name.reference)
        self._keep(data, digest)
        self.top = {"mediaType": mt, "digest": digest, "size": len(data)}

    def _keep(self, data: bytes, digest: str) -> None:
        self.documents[digest] = data
        try:
            entries = json.loads(data).get("manifests")
        except (ValueError, AttributeError):
            return
        if isinstance(entries, list):
            self.manifests.update(
                d["digest"] for d in entries if isinstance(d, dict) and is_digest(d.get("digest"))
            )

    def open(self, name: str) -> tuple[BinaryIO, int] | None:
        if name == "index.json":
            data = json.dumps({"schemaVersion": 2, "manifests": [self.top]}).encode()
            return io.BytesIO(data), len(data)
        alg, _, hexdigest = name.removeprefix("blobs/").partition("/")
        digest = f"{alg}:{hexdigest}"
        if digest not in self.documents and digest in self.manifests:
            data, _, _ = fetch_manifest(self.client, digest)
            self._keep(data, digest)
        if digest in self.documents:
            return io.BytesIO(self.documents[digest]), len(self.documents[digest])
        return fetch_blob(self.client, digest)

    def close(self) -> None:
        self.client.close()


def open_registry(
    ref: ImageRef,
    arch: str | None,
    *,
    tls_verify: bool = True,
    credentials: tuple[str, str] | None = None,
) -> OpenedImage:
    """The image `ref` names in its registry (the host's or `arch`'s of a multi-arch one),
    manifest and config fetched and verified, layers ready to be streamed."""
    client = Client(registry_name(ref), tls_verify=tls_verify, credentials=credentials)
    try:
        src = RegistrySource(client)
        return open_oci(src, None, arch)
    except CfsbootError:
        client.close()
        raise


__all__ = ["Client", "RegistryName", "RegistrySource", "open_registry"]
