"""Every transport cfsboot does not read itself goes through `skopeo copy` into an OCI layout
(a registry too, unless registryconf.choose picks cfsboot's own client, registry.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

from cfsboot.errors import die
from cfsboot.linux.run import run
from cfsboot.oci.documents import is_digest
from cfsboot.oci.reference import ImageRef, Transport

LOCAL_TAG = "image"

# What skopeo reads from the environment besides the defaults run() keeps: where the
# registries.conf (e.g. `insecure = true` for a plain-HTTP registry) and credentials
# are, and proxies. Everything else stays out, as for every command cfsboot runs.
PASSED_ENV = (
    "CONTAINERS_REGISTRIES_CONF",
    "CONTAINERS_CONF",
    "REGISTRY_AUTH_FILE",
    "XDG_RUNTIME_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


def source_spec(ref: ImageRef) -> str:
    """The reference in skopeo's own syntax."""
    if ref.transport is Transport.DOCKER:
        return f"docker:{ref.path}"  # path keeps its leading "//"
    return f"{ref.transport}:{ref.path}"


def copy_argv(
    ref: ImageRef, dest: Path, *, arch: str | None = None, tls_verify: bool | None = None
) -> list[str]:
    """The `skopeo copy` command line that copies `ref` into the OCI layout `dest`.

    skopeo picks the host's architecture from a multi-arch image unless told
    otherwise (--override-arch is a global option, so it precedes `copy`).
    `tls_verify` None leaves TLS to skopeo and registries.conf (where a registry
    can be marked `insecure = true`); False reaches a registry over plain HTTP
    or with an untrusted certificate.
    """
    argv = ["skopeo"]
    if arch is not None:
        argv += ["--override-arch", arch]
    argv += ["copy", "--quiet"]
    if tls_verify is not None:
        argv.append(f"--src-tls-verify={'true' if tls_verify else 'false'}")
    argv += [source_spec(ref), f"oci:{dest}:{LOCAL_TAG}"]
    return argv


def copy_to_oci(
    ref: ImageRef,
    dest: Path,
    *,
    arch: str | None = None,
    tls_verify: bool | None = None,
    skip: Collection[str] = (),
) -> ImageRef:
    """Copy `ref` into the OCI layout `dest` and return a reference to the copy.

    skip: digests of layer blobs the caller will not read (the repository has their
    records). skopeo's OCI destination reuses a blob whose file is already there
    (without reading it, and leaving the manifest as the registry serves it), so an
    empty file stands in for each and the blob is never fetched.
    """
    for digest in skip:
        if not is_digest(digest):
            die(f"{ref}: skopeo named a layer {digest!r}, which is not a digest")
        alg, _, hexdigest = digest.partition(":")
        blob = dest / "blobs" / alg / hexdigest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.touch()
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    run(copy_argv(ref, dest, arch=arch, tls_verify=tls_verify), env=env)
    return ImageRef(Transport.OCI, str(dest), LOCAL_TAG)


def _inspect_argv(
    ref: ImageRef, what: list[str], *, arch: str | None, tls_verify: bool | None
) -> list[str]:
    argv = ["skopeo"]
    if arch is not None:
        argv += ["--override-arch", arch]
    argv += ["inspect", *what]
    if tls_verify is not None:
        argv.append(f"--tls-verify={'true' if tls_verify else 'false'}")
    argv.append(source_spec(ref))
    return argv


def inspect_layers(
    ref: ImageRef, *, arch: str | None = None, tls_verify: bool | None = None
) -> list[tuple[str, int | None]]:
    """The layer blobs of `ref`'s image (the host's or `arch`'s), bottom first: (digest,
    size), the size None when unknown. Only manifests and the config travel.

    The manifest as the registry serves it (`inspect --raw`) names both; a multi-arch
    index does not, and `skopeo inspect`'s Layers (digests only) name the blobs of the
    image skopeo picks from it.
    """
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    argv = _inspect_argv(ref, ["--raw"], arch=arch, tls_verify=tls_verify)
    try:
        doc = json.loads(run(argv, capture=True, env=env).stdout)
        if isinstance(doc, dict) and isinstance(doc.get("layers"), list):
            return [(str(d["digest"]), int(d["size"])) for d in doc["layers"]]
        argv = _inspect_argv(ref, ["--no-tags"], arch=arch, tls_verify=tls_verify)
        layers = json.loads(run(argv, capture=True, env=env).stdout).get("Layers") or []
        return [(str(d), None) for d in layers]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        die(f"{ref}: `skopeo inspect` printed no layer list cfsboot understands ({e})")


def inspect_config(
    ref: ImageRef, *, arch: str | None = None, tls_verify: bool | None = None
) -> bytes:
    """The raw config blob of `ref` (the host's or `arch`'s image of a multi-arch one).

    Only the manifest and the config travel, never a layer: what `upgrade --check`
    needs. The config's digest survives skopeo's manifest conversions (Docker v2s2
    to OCI), so it names the same image here and in the OCI layout `copy_to_oci` makes.
    """
    argv = _inspect_argv(ref, ["--config", "--raw"], arch=arch, tls_verify=tls_verify)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    return run(argv, capture=True, env=env).stdout
