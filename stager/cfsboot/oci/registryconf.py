"""Whether a `docker://` image is fetched by cfsboot's own client (registry.py) or by skopeo.

cfsboot's client does what skopeo does for a registry only when the containers
configuration asks nothing more of it; anything it does not understand sends the
image to skopeo, which reads that configuration itself:

- the signature policy (containers-policy.json(5): $HOME/.config/containers/policy.json
  when it exists, else /etc/containers/policy.json) must accept anything
  (`insecureAcceptAnything`) for the reference under the docker transport;
- no containers-registries.conf(5) entry may match the reference, except one that only
  marks its registry `insecure` (as the VM tests' does), which means what
  --src-tls-verify=false means. Files read: $CONTAINERS_REGISTRIES_CONF or
  /etc/containers/registries.conf, $HOME/.config/containers/registries.conf, and the
  registries.conf.d drop-ins of both; matching entries that disagree mean skopeo;
- credentials (containers-auth.json(5): $REGISTRY_AUTH_FILE,
  $XDG_RUNTIME_DIR/containers/auth.json, $HOME/.config/containers/auth.json,
  $HOME/.docker/config.json, the first that names the registry) must be a plain
  `auth` user:password, or absent: a credential helper, an identity token or a
  repository-scoped entry mean skopeo;
- no proxy set, and no certs.d directory for the registry (custom CA, client certs).

CFSBOOT_REGISTRY_CLIENT=skopeo|native|auto (default auto) forces either.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cfsboot.errors import die
from cfsboot.oci.reference import ImageRef, Transport
from cfsboot.oci.registry import RegistryName, registry_name

ENV = "CFSBOOT_REGISTRY_CLIENT"
ETC = Path("/etc/containers")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_SIMPLE_KEYS = {"location", "prefix", "insecure", "blocked"}


@dataclass(frozen=True)
class Choice:
    native: bool
    why: str  # for the log: which client and why
    tls_verify: bool = True  # for the native client
    credentials: tuple[str, str] | None = None


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def _matches(prefix: str, name: RegistryName) -> bool:
    """containers/image's prefix match: the whole name or up to a `/`, `:` or `@`;
    `*.DOMAIN` matches the registries under DOMAIN."""
    if prefix.startswith("*."):
        host = name.domain.partition(":")[0]
        return host.endswith(prefix[1:])
    full = name.full
    return full == prefix or (full.startswith(prefix) and full[len(prefix)] in "/:@")


def policy_refusal(name: RegistryName, env: Mapping[str, str], etc: Path = ETC) -> str | None:
    """Why the signature policy may ask more than insecureAcceptAnything; None: it does not."""
    user = _home(env) / ".config/containers/policy.json"
    path = user if user.exists() else etc / "policy.json"
    try:
        doc = json.loads(path.read_bytes())
        scopes = doc.get("transports", {}).get("docker", {})
        default = doc.get("default")
    except (OSError, ValueError, AttributeError) as e:
        return f"{path} cannot be read ({e.__class__.__name__})"
    if not isinstance(scopes, dict):
        return f"{path}: docker transport not understood"
    repo = f"{name.domain}/{name.repository}"
    candidates = [name.full, repo]
    while "/" in repo:
        repo = repo.rpartition("/")[0]
        candidates.append(repo)
    labels = name.domain.partition(":")[0].split(".")
    candidates += ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]
    candidates.append("")
    reqs = next((scopes[c] for c in candidates if c in scopes), default)
    if not isinstance(reqs, list) or not reqs:
        return f"{path}: no policy understood for {name.full}"
    if any(not isinstance(r, dict) or r.get("type") != "insecureAcceptAnything" for r in reqs):
        return f"{path} asks more than insecureAcceptAnything for {name.full}"
    return None


def _conf_files(env: Mapping[str, str], etc: Path) -> list[Path]:
    user = _home(env) / ".config/containers"
    main = (
        Path(env["CONTAINERS_REGISTRIES_CONF"])
        if env.get("CONTAINERS_REGISTRIES_CONF")
        else etc / "registries.conf"
    )
    files = [main, user / "registries.conf"]
    for d in (etc / "registries.conf.d", user / "registries.conf.d"):
        try:
            files += sorted(p for p in d.iterdir() if p.suffix == ".conf")
        except OSError:
            pass
    return [f for f in files if f.exists()]


def registries_conf(
    name: RegistryName, env: Mapping[str, str], etc: Path = ETC
) -> tuple[bool | None, str | None]:
    """(insecure: True/False when an entry says so, else None; why skopeo, or None)."""
    insecure: set[bool] = set()
    host = name.domain
    for path in _conf_files(env, etc):
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, ValueError) as e:
            return None, f"{path} cannot be read ({e.__class__.__name__})"
        helpers = doc.get("credential-helpers")
        if helpers not in (None, ["containers-auth.json"]):
            return None, f"{path} names credential helpers"
        legacy = doc.get("registries")
        if isinstance(legacy, dict):  # the version 1 format's tables
            for table, entries in legacy.items():
                regs = entries.get("registries", []) if isinstance(entries, dict) else []
                if table == "block" and host in regs:
                    return None, f"{path} blocks {host}"
                if table == "insecure" and host in regs:
                    insecure.add(True)
        for entry in doc.get("registry", []) or []:
            if not isinstance(entry, dict):
                return None, f"{path}: a [[registry]] entry not understood"
            prefix = entry.get("prefix") or entry.get("location")
            if not isinstance(prefix, str) or not _matches(prefix, name):
                continue
            if (
                set(entry) - _SIMPLE_KEYS
                or entry.get("blocked")
                or ("prefix" in entry and entry.get("location") not in (None, entry["prefix"]))
            ):
                return None, f"{path} has an entry for {prefix} (mirror, rewrite or block)"
            insecure.add(bool(entry.get("insecure", False)))
    if len(insecure) > 1:
        return None, f"registries.conf entries for {host} disagree on insecure"
    return (insecure.pop() if insecure else None), None


def _auth_files(env: Mapping[str, str]) -> list[Path]:
    home = _home(env)
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers/auth.json")
    files += [home / ".config/containers/auth.json", home / ".docker/config.json"]
    return files


def _auth_key(key: str) -> str:
    """An auths key as a registry name: docker's `https://index.docker.io/v1/` is docker.io."""
    key = key.removeprefix("https://").removeprefix("http://")
    if key.endswith("/v1/") or key.endswith("/v1") or key.endswith("/v2/"):
        key = key.rsplit("/v", 1)[0]
    key = key.rstrip("/")
    return "docker.io" if key in ("index.docker.io", "registry-1.docker.io") else key


def credentials(
    name: RegistryName, env: Mapping[str, str]
) -> tuple[tuple[str, str] | None, str | None]:
    """(user and password the auth files give for the registry, or None; why skopeo, or None)."""
    for path in _auth_files(env):
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            return None, f"{path} cannot be read ({e.__class__.__name__})"
        if not isinstance(doc, dict):
            return None, f"{path} is not understood"
        if doc.get("credsStore") or name.domain in (doc.get("credHelpers") or {}):
            return None, f"{path} names a credential helper"
        auths = doc.get("auths") or {}
        if not isinstance(auths, dict):
            return None, f"{path} is not understood"
        found = None
        for key, entry in auths.items():
            reg = _auth_key(str(key))
            if reg.startswith(f"{name.domain}/"):
                return None, f"{path} has repository-scoped credentials for {name.domain}"
            if reg == name.domain:
                found = entry
        if found is None:
            continue
        if not isinstance(found, dict) or found.get("identitytoken") or not found.get("auth"):
            return None, f"{path}: credentials for {name.domain} cfsboot cannot use"
        try:
            user, sep, password = (
                base64.b64decode(found["auth"], validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError, TypeError):
            return None, f"{path}: credentials for {name.domain} not understood"
        if not sep:
            return None, f"{path}: credentials for {name.domain} not understood"
        return (user, password), None
    return None, None


def _loopback(host: str) -> bool:
    host = host.rpartition(":")[0] if host.count(":") == 1 else host
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose(
    ref: ImageRef,
    tls_verify: bool | None,
    env: Mapping[str, str] | None = None,
    etc: Path = ETC,
) -> Choice:
    """Which client fetches `ref`, and how (`tls_verify` None: as registries.conf says)."""
    env = os.environ if env is None else env
    mode = env.get(ENV) or "auto"
    if mode not in ("auto", "native", "skopeo"):
        die(f"{ENV}={mode!r} is not one of auto, native, skopeo")
    if ref.transport is not Transport.DOCKER:
        return Choice(False, f"skopeo: {ref.transport} is not a registry")
    if mode == "skopeo":
        return Choice(False, f"skopeo: {ENV}=skopeo")
    name = registry_name(ref)
    insecure, conf_why = registries_conf(name, env, etc)
    creds, auth_why = credentials(name, env)
    reasons = [
        policy_refusal(name, env, etc),
        conf_why,
        auth_why,
        next((f"${v} is set" for v in PROXY_VARS if env.get(v)), None)
        if not _loopback(name.domain)
        else None,
        next(
            (
                f"{d} exists"
                for d in (
                    etc / "certs.d" / name.domain,
                    Path("/etc/docker/certs.d") / name.domain,
                    _home(env) / ".config/containers/certs.d" / name.domain,
                )
                if d.exists()
            ),
            None,
        ),
    ]
    why = next((r for r in reasons if r), None)
    verify = tls_verify if tls_verify is not None else not insecure
    if why is not None and mode == "auto":
        return Choice(False, f"skopeo: {why}")
    told = (
        f"{ENV}=native"
        if mode == "native"
        else "nothing in the containers configuration needs skopeo"
    )
    return Choice(True, f"native client: {told}", verify, creds)
