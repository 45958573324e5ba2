"""An independent check that a `status --json` document is a valid bootc `Host` (host-v1).

Written from bootc's published schema (docs/src/host-v1.schema.json, crates/lib/src/spec.rs),
not from cfsboot's TypedDicts: the required properties, the types, the enumerations. bootc's
schema forbids no extra property, so none is flagged here either; `check` returns the paths
of the ones it does not define, for a test to look at.
"""

from __future__ import annotations

from typing import Any

BOOT_TYPES = ("Bls", "Uki")
BOOTLOADERS = ("grub", "grub-cc", "systemd", "none")
BOOT_ORDERS = ("default", "rollback")
HOST_TYPES = ("bootcHost",)
ACCESS_MODES = ("readOnly", "readWrite")
PERSISTENCE = ("transient", "persistent")

_HOST = {"apiVersion", "kind", "metadata", "spec", "status"}
_STATUS = {"staged", "booted", "rollback", "otherDeployments", "rollbackQueued", "type"}
_STATUS |= {"usrOverlay", "storage"}
_ENTRY = {"image", "cachedUpdate", "incompatible", "pinned", "softRebootCapable"}
_ENTRY |= {"downloadOnly", "store", "ostree", "composefs"}
_IMAGE_STATUS = {"image", "version", "timestamp", "imageDigest", "architecture"}
_COMPOSEFS = {"verity", "bootType", "bootloader", "bootDigest", "missingVerityAllowed"}


class SchemaError(AssertionError):
    """A document that bootc's host-v1 schema would refuse."""


def _fail(path: str, what: str) -> SchemaError:
    return SchemaError(f"{path}: {what}")


def _obj(v: Any, path: str, required: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(path, f"expected an object, not {v!r}")
    missing = sorted(required - set(v))
    if missing:
        raise _fail(path, f"missing {', '.join(missing)}")
    return v


def _str(v: Any, path: str, *, nullable: bool = False, enum: tuple[str, ...] = ()) -> None:
    if v is None and nullable:
        return
    if not isinstance(v, str):
        raise _fail(path, f"expected a string, not {v!r}")
    if enum and v not in enum:
        raise _fail(path, f"{v!r} is not one of {', '.join(enum)}")


def _bool(v: Any, path: str) -> None:
    if not isinstance(v, bool):
        raise _fail(path, f"expected true or false, not {v!r}")


def _image_ref(v: Any, path: str) -> None:
    o = _obj(v, path, {"image", "transport"})
    _str(o["image"], f"{path}.image")
    _str(o["transport"], f"{path}.transport")


def _image_status(v: Any, path: str, extra: list[str]) -> None:
    if v is None:
        return
    o = _obj(v, path, {"image", "imageDigest", "architecture"})
    _image_ref(o["image"], f"{path}.image")
    _str(o["imageDigest"], f"{path}.imageDigest")
    _str(o["architecture"], f"{path}.architecture")
    _str(o.get("version"), f"{path}.version", nullable=True)
    _str(o.get("timestamp"), f"{path}.timestamp", nullable=True)
    extra += [f"{path}.{k}" for k in sorted(set(o) - _IMAGE_STATUS)]


def _entry(v: Any, path: str, extra: list[str]) -> None:
    if v is None:
        return
    o = _obj(v, path, {"incompatible", "pinned"})
    _bool(o["incompatible"], f"{path}.incompatible")
    _bool(o["pinned"], f"{path}.pinned")
    for key in ("softRebootCapable", "downloadOnly"):
        if key in o:
            _bool(o[key], f"{path}.{key}")
    _image_status(o.get("image"), f"{path}.image", extra)
    _image_status(o.get("cachedUpdate"), f"{path}.cachedUpdate", extra)
    if o.get("store") is not None:
        _str(o["store"], f"{path}.store", enum=("ostreeContainer",))
    cfs = o.get("composefs")
    if cfs is not None:
        c = _obj(cfs, f"{path}.composefs", {"verity", "bootType", "bootloader"})
        _str(c["verity"], f"{path}.composefs.verity")
        _str(c["bootType"], f"{path}.composefs.bootType", enum=BOOT_TYPES)
        _str(c["bootloader"], f"{path}.composefs.bootloader", enum=BOOTLOADERS)
        _str(c.get("bootDigest"), f"{path}.composefs.bootDigest", nullable=True)
        if "missingVerityAllowed" not in c:
            raise _fail(f"{path}.composefs", "missing missingVerityAllowed")
        _bool(c["missingVerityAllowed"], f"{path}.composefs.missingVerityAllowed")
        extra += [f"{path}.composefs.{k}" for k in sorted(set(c) - _COMPOSEFS)]
    extra += [f"{path}.{k}" for k in sorted(set(o) - _ENTRY)]


def check(doc: Any) -> list[str]:
    """Raise SchemaError unless `doc` is a valid Host; return the properties bootc lacks."""
    extra: list[str] = []
    host = _obj(doc, "$", {"apiVersion", "kind"})
    _str(host["apiVersion"], "$.apiVersion")
    _str(host["kind"], "$.kind")
    spec = _obj(host.get("spec", {}), "$.spec", set())
    if spec.get("image") is not None:
        _image_ref(spec["image"], "$.spec.image")
    if "bootOrder" in spec:
        _str(spec["bootOrder"], "$.spec.bootOrder", enum=BOOT_ORDERS)
    status = _obj(host.get("status", {}), "$.status", set())
    for slot in ("staged", "booted", "rollback"):
        _entry(status.get(slot), f"$.status.{slot}", extra)
    others = status.get("otherDeployments", [])
    if not isinstance(others, list):
        raise _fail("$.status.otherDeployments", f"expected an array, not {others!r}")
    for i, e in enumerate(others):
        if e is None:
            raise _fail(f"$.status.otherDeployments[{i}]", "null is not a BootEntry")
        _entry(e, f"$.status.otherDeployments[{i}]", extra)
    if "rollbackQueued" in status:
        _bool(status["rollbackQueued"], "$.status.rollbackQueued")
    _str(status.get("type"), "$.status.type", nullable=True, enum=HOST_TYPES)
    overlay = status.get("usrOverlay")
    if overlay is not None:
        o = _obj(overlay, "$.status.usrOverlay", {"accessMode", "persistence"})
        _str(o["accessMode"], "$.status.usrOverlay.accessMode", enum=ACCESS_MODES)
        _str(o["persistence"], "$.status.usrOverlay.persistence", enum=PERSISTENCE)
    extra += [f"$.{k}" for k in sorted(set(host) - _HOST)]
    extra += [f"$.status.{k}" for k in sorted(set(status) - _STATUS)]
    return extra


def unknown(doc: Any) -> list[str]:
    """check(doc) without cfsboot's own `cfsboot` objects (boot assessment), which bootc's
    schema allows as it allows any extra property: what is left is a property no one
    declared."""
    return [p for p in check(doc) if not p.endswith(".cfsboot")]
