"""`cfsboot status`: the deployments, as bootc's `BootcHost` (apiVersion org.containers.bootc/v1).

The boot menu is the source of truth (as in bootc): a deployment is one that
a cfsboot boot entry (live or staged) points at. Its state directory and
origin add the image reference and boot digest; the repository's copy of the
image's manifest and config adds version, timestamp and architecture.

- booted: the running deployment (from the `/` mount, confirmed by the
  `composefs=` karg); on a physical root that is not running (--sysroot on a
  disk image) the deployment its menu boots by default stands in for it;
- staged: named by /run/composefs/staged-deployment, first in the staged menu;
- rollback: the first other deployment in the live menu; the rest are
  otherDeployments.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from cfsboot.boot.bootloader import Bootloader, BootloaderKind, MenuEntry
from cfsboot.boot.boottype import BootType
from cfsboot.boot.uki import parse_uki
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import current_deployment
from cfsboot.image.bootscan import BootResources
from cfsboot.image.imagefiles import bootfile_bytes
from cfsboot.image.importer import read_image_info
from setuproot.contract import KargError, parse_cmdline

log = logging.getLogger(__name__)

API_VERSION = "org.containers.bootc/v1"
KIND = "BootcHost"
VERSION_LABEL = "org.opencontainers.image.version"


def image_reference(imgref: str) -> dict[str, str]:
    """bootc's ImageReference: `docker://x` -> {image: x, transport: registry}."""
    transport, _, rest = imgref.partition(":")
    if transport == "docker":
        return {"image": rest.removeprefix("//"), "transport": "registry"}
    return {"image": rest, "transport": transport}


@dataclass(frozen=True)
class Deployment:
    digest: str
    entry: MenuEntry
    origin: Origin | None
    verity_required: bool
    info: dict[str, Any]


def _stream_json(sysroot: Sysroot, name: str) -> dict[str, Any]:
    data = sysroot.repo.read_stream(name)
    if data is None:
        return {}
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _verity_required(sysroot: Sysroot, entry: MenuEntry, info: dict[str, Any]) -> bool:
    cmdline = " ".join(entry.options)
    if entry.boot_type is BootType.UKI:
        # The command line is sealed in the UKI: read it from the repository's copy.
        boot = BootResources.from_json(info.get("boot") or {})
        for uki_file in boot.ukis:
            try:
                cmdline = parse_uki(bootfile_bytes(sysroot.repo, uki_file)).cmdline or ""
            except Exception as e:  # a damaged UKI must not break status
                log.warning("cannot read %s: %s", uki_file.path, e)
            break
    try:
        kargs = parse_cmdline(cmdline)
    except KargError:
        return False
    return any(not k.insecure for k in kargs if k.digest == entry.deployment)


def _deployment(sysroot: Sysroot, entry: MenuEntry) -> Deployment:
    d = entry.deployment
    origin = sysroot.origin(d) if sysroot.deploy_dir(d).is_dir() else None
    info = read_image_info(sysroot.repo, d) or {}
    return Deployment(d, entry, origin, _verity_required(sysroot, entry, info), info)


def _boot_entry(
    sysroot: Sysroot, dep: Deployment, bootloader: BootloaderKind, *, download_only: bool = False
) -> dict[str, Any]:
    info = dep.info
    ref = dep.origin.image if dep.origin is not None else info.get("reference")
    manifest_digest = (dep.origin.manifest_digest if dep.origin else None) or info.get(
        "manifest_digest"
    )
    image: dict[str, Any] | None = None
    if ref:
        manifest = _stream_json(sysroot, f"cfsboot-manifest-{manifest_digest}")
        config = _stream_json(sysroot, f"cfsboot-config-{info.get('config_digest')}")
        labels = (config.get("config") or {}).get("Labels") or {}
        version = (manifest.get("annotations") or {}).get(VERSION_LABEL) or labels.get(
            VERSION_LABEL
        )
        image = {
            "image": image_reference(str(ref)),
            "version": version,
            "timestamp": config.get("created"),
            "imageDigest": manifest_digest,
            "architecture": config.get("architecture"),
        }
    boot_type = dep.origin.boot_type if dep.origin else dep.entry.boot_type
    return {
        "image": image,
        "cachedUpdate": None,
        "incompatible": False,
        "pinned": False,
        "softRebootCapable": False,
        "downloadOnly": download_only,
        "store": None,
        "ostree": None,
        "composefs": {
            "verity": dep.digest,
            "bootType": "Uki" if boot_type is BootType.UKI else "Bls",
            "bootloader": "systemd" if bootloader is BootloaderKind.SYSTEMD_BOOT else "grub",
            "bootDigest": dep.origin.boot_digest if dep.origin else None,
            "missingVerityAllowed": not dep.verity_required,
        },
    }


def host_status(sysroot: Sysroot, bl: Bootloader) -> dict[str, Any]:
    """The BootcHost document for this physical root."""
    live = bl.menu()
    current = current_deployment(sysroot, bl)
    marker = sysroot.staged()
    staged_menu = bl.menu(staged=True) if marker is not None else []
    staged_entry = (
        next((m for m in staged_menu[:1] if m.deployment == marker.depl_id), None)
        if marker
        else None
    )
    by_id = {m.deployment: m for m in live}

    booted = by_id.get(current) if current else None
    if booted is None and current is not None:
        # Booted from an entry that is gone (e.g. removed by hand): still report it.
        booted = next((m for m in staged_menu if m.deployment == current), None)
    others = [
        m for m in live if m.deployment not in (current, staged_entry and staged_entry.deployment)
    ]
    rollback = others[0] if others else None

    def entry(m: MenuEntry | None, **kw: bool) -> dict[str, Any] | None:
        return None if m is None else _boot_entry(sysroot, _deployment(sysroot, m), bl.kind, **kw)

    rollback_queued = bool(live) and current is not None and live[0].deployment != current
    spec_source = staged_entry or booted
    spec_image = None
    if spec_source is not None:
        origin = sysroot.origin(spec_source.deployment)
        if origin is not None:
            spec_image = image_reference(origin.image)
    status: dict[str, Any] = {
        "staged": entry(staged_entry, download_only=bool(marker and marker.finalization_locked)),
        "booted": entry(booted),
        "rollback": entry(rollback),
    }
    if len(others) > 1:
        status["otherDeployments"] = [entry(m) for m in others[1:]]
    status |= {
        "rollbackQueued": rollback_queued,
        "type": None,
        "usrOverlay": None,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "host"},
        "spec": {
            "image": spec_image,
            "bootOrder": "rollback" if rollback_queued else "default",
        },
        "status": status,
    }


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    s = str(v)
    plain = (
        s
        and s.strip() == s
        and not any(c in s for c in ":#{}[],&*!|>'\"%@`\n")
        and s[0] not in "-?"
    )
    if plain and s.lower() not in ("null", "true", "false", "yes", "no", "~") and not _numberish(s):
        return s
    return json.dumps(s)


def _numberish(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def to_yaml(doc: Any, indent: int = 0) -> str:
    """A small YAML emitter for JSON-shaped data (block style, strings quoted when needed)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if isinstance(v, dict) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 1))
            elif isinstance(v, list) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 1))
            else:
                empty = "{}" if isinstance(v, dict) else "[]" if isinstance(v, list) else None
                lines.append(f"{pad}{k}: {empty or _yaml_scalar(v)}")
    elif isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict | list) and item:
                body = to_yaml(item, indent + 1).lstrip()
                lines.append(f"{pad}- {body}")
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    else:
        lines.append(pad + _yaml_scalar(doc))
    return "\n".join(lines)


def human(doc: dict[str, Any]) -> str:
    """bootc's human-readable layout: one block per deployment."""
    status = doc["status"]
    out: list[str] = []
    slots = [
        ("staged", "  Staged image"),
        ("booted", "● Booted image"),
        ("rollback", "  Rollback image"),
    ]
    blocks = [(label, status.get(key)) for key, label in slots]
    blocks += [("  Other image", e) for e in status.get("otherDeployments", [])]
    for label, e in blocks:
        if not e:
            continue
        img = e.get("image") or {}
        ref = (img.get("image") or {}).get("image", "(unknown)")
        cfs = e["composefs"]
        out.append(f"{label}: {ref}")
        if img.get("imageDigest"):
            arch = f" ({img['architecture']})" if img.get("architecture") else ""
            out.append(f"        Digest: {img['imageDigest']}{arch}")
        out.append(f"        Verity: {cfs['verity']}")
        if img.get("version") or img.get("timestamp"):
            when = f" ({img['timestamp']})" if img.get("timestamp") else ""
            out.append(f"       Version: {img.get('version') or '-'}{when}")
        enforced = "Not Enforced" if cfs["missingVerityAllowed"] else "Enforced"
        out.append(f"     Boot type: {cfs['bootType']} ({cfs['bootloader']}), fs-verity {enforced}")
        if e.get("downloadOnly"):
            out.append("                (download only: not finalized at shutdown)")
        out.append("")
    if not out:
        return "No deployments.\n"
    if status.get("rollbackQueued"):
        out.append("Rollback queued: the rollback deployment boots next.")
    return "\n".join(out).rstrip("\n") + "\n"
