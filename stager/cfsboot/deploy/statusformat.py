"""`cfsboot status` output: bootc's BootcHost document as YAML, or for people.

The human layout follows bootc's (one block per deployment, rows aligned on the
label); cfsboot adds its verity, boot type and boot assessment rows.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    import re
    from typing import Any

    from cfsboot.deploy.statusdoc import BootcHost, BootEntry, HostStatus


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
    if plain and s.lower() not in _WORDS and not _numberish(s) and not _implicit().fullmatch(s):
        return s
    return json.dumps(s)


# Plain scalars a YAML 1.1 reader (PyYAML, most tools) takes for another type: booleans
# and null, ints (0x, 0b, octal, sexagesimal 1:30), floats (.inf, .nan), dates and
# timestamps (a version "2024-01-01"), the merge key `<<` and `=`.
_WORDS = frozenset({"null", "~", "true", "false", "yes", "no", "y", "n", "on", "off"})
_IMPLICIT = r"""
    [-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0o?[0-7_]+|[0-9][0-9_]*(?::[0-5]?[0-9])*)
  | [-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
  | [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
  | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
  | [0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt\ \t].*)?
  | << | =
"""


_compiled: list[re.Pattern[str]] = []


def _implicit() -> re.Pattern[str]:
    if not _compiled:
        import re  # json has imported it already

        _compiled.append(re.compile(_IMPLICIT, re.VERBOSE))
    return _compiled[0]


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


def only_booted(doc: BootcHost) -> BootcHost:
    """`status --booted`: the document with the booted deployment only (no staged,
    rollback or other deployments); the host's own fields stay."""
    status: HostStatus = {  # type: ignore[assignment]
        k: v for k, v in doc["status"].items() if k != "otherDeployments"
    }
    status["staged"] = None
    status["rollback"] = None
    return {**doc, "status": status}


def human(doc: BootcHost, *, verbose: bool = False) -> str:
    """bootc's human-readable layout: one block per deployment, rows aligned on the label."""
    status = doc["status"]
    blocks: list[tuple[str, BootEntry | None]] = [
        ("Staged", status["staged"]),
        ("Booted", status["booted"]),
        ("Rollback", status["rollback"]),
    ]
    blocks += [("Other", e) for e in status.get("otherDeployments", [])]
    out: list[str] = []
    for slot, e in blocks:
        if e is not None:
            out += _human_entry(slot, e, status, verbose)
            out.append("")
    if not out:
        return "System is not deployed via cfsboot (no deployments).\n"
    if status["rollbackQueued"]:
        out.append("Rollback queued: the rollback deployment boots next.")
    assessed = status.get("cfsboot", {}).get("bootAssessment")
    if assessed and assessed["fallback"]:
        out.append(f"Automatic rollback: {assessed['message']}.")
    nxt = status.get("cfsboot", {}).get("nextBoot")
    if nxt and nxt["override"] is not None:
        out.append(f"Boot loader override: {nxt['override']['message']}.")
    return "\n".join(out).rstrip("\n") + "\n"


def _timestamp(value: str) -> str:
    """An image's `created` the way bootc shows it: UTC, to the second."""
    from datetime import UTC, datetime  # the human layout only (not for --json)

    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return value
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _human_entry(slot: str, e: BootEntry, status: HostStatus, verbose: bool) -> list[str]:
    img, cfs = e["image"], e["composefs"]
    mark = "●" if slot == "Booted" else " "
    label = f"{mark} {slot} {'image' if img else 'composefs'}"
    if slot == "Other":
        label = " " + label  # bootc's indent for it
    width = len(label)

    def row(name: str, value: str) -> str:
        return f"{name:>{width}}: {value}"

    if img is None:
        out = [label, row("Verity", cfs["verity"])]
    else:
        ref = img["image"]
        name = (
            ref["image"] if ref["transport"] == "registry" else f"{ref['transport']}:{ref['image']}"
        )
        out = [f"{label}: {name}"]
        arch = f" ({img['architecture']})" if img["architecture"] else ""
        out.append(row("Digest", f"{img['imageDigest'] or '(not recorded)'}{arch}"))
        out.append(row("Verity", cfs["verity"]))
        when = _timestamp(img["timestamp"]) if img["timestamp"] else None
        if img["version"]:
            out.append(row("Version", img["version"] + (f" ({when})" if when else "")))
        elif when:
            out.append(row("Timestamp", when))
    names = {"systemd": "systemd-boot", "none": "boot loader not managed by cfsboot"}
    loader = names.get(cfs["bootloader"], cfs["bootloader"])
    out.append(row("Boot type", f"{cfs['bootType']} ({loader})"))
    if e["pinned"]:
        out.append(row("Pinned", "yes"))
    update = e["cachedUpdate"]
    if update is not None:  # what `upgrade --check` found
        what = update["version"] or update["imageDigest"] or "a new image"
        out.append(row("Update", f"{what} available (cfsboot upgrade)"))
    overlay = status["usrOverlay"]
    if slot == "Booted" and overlay is not None:
        access = "read-only" if overlay["accessMode"] == "readOnly" else "read/write"
        out.append(row("/usr overlay", f"{overlay['persistence']}, {access}"))
    if verbose:
        out.append(row("Soft-reboot", "yes" if e["softRebootCapable"] else "no"))
        out.append(row("FsVerity", "Not Enforced" if cfs["missingVerityAllowed"] else "Enforced"))
        if slot == "Staged":
            out.append(row("Download-only", "yes" if e["downloadOnly"] else "no"))
    trial = e.get("cfsboot", {}).get("bootAssessment")
    if trial is not None:
        done = f"{trial['triesDone']} tries used"
        if trial["state"] == "failed":
            out.append(row("Assessment", f"failed, {done}, not tried again"))
        else:
            out.append(row("Assessment", f"on trial, {trial['triesLeft']} tries left ({done})"))
        if trial["lastFailure"] is not None and trial["lastFailure"]["failed"]:
            out.append(row("Last failure", "; ".join(trial["lastFailure"]["failed"])))
    return out
