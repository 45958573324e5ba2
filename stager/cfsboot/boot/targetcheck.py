"""Whether `install to-disk` may write over its target: what is on it, and who uses it.

bootc's rule: a disk that holds anything (a partition table, a filesystem, any
signature libblkid knows, as `wipefs` lists them) is written over only with
`--wipe`; a disk that is in use (something on it mounted, swap on it, the
running root standing on it through partitions, device mapper, md or a loop
device) never is. Refusals name everything found, in one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cfsboot.errors import die
from cfsboot.linux import blockdev, mountinfo
from cfsboot.linux.run import run

# Mount points whose filesystem is the running system's root: "/" and, on a composefs
# (or ostree) system, where the physical root stays reachable.
ROOT_MOUNTS = ("/", "/sysroot")


@dataclass(frozen=True)
class Signature:
    """One signature `wipefs` found: its type (ext4, gpt, swap...) and usage."""

    type: str
    usage: str  # filesystem, partition-table, raid, crypto, other
    offset: int

    def describe(self) -> str:
        usage = {"partition-table": "partition table", "other": "signature"}.get(
            self.usage, self.usage
        )
        return f"{'an' if self.type[:1].lower() in 'aeiou' else 'a'} {self.type} {usage}"


def parse_wipefs(text: str) -> list[Signature]:
    """`wipefs --json --output TYPE,USAGE,OFFSET` output (empty output: nothing found)."""
    if not text.strip():
        return []
    doc = json.loads(text)
    return [
        Signature(str(s["type"]), str(s.get("usage") or "other"), int(str(s["offset"]), 0))
        for s in doc.get("signatures", [])
    ]


def signatures(target: Path) -> list[Signature]:
    """The signatures libblkid finds on `target` (wipefs lists them and changes nothing)."""
    proc = run(["wipefs", "--json", "--output", "TYPE,USAGE,OFFSET", target], capture=True)
    return parse_wipefs(proc.stdout.decode())


def describe_signatures(found: Sequence[Signature]) -> list[str]:
    """One phrase per kind of content (a GPT's backup header and its protective MBR
    are the same partition table)."""
    types = {s.type for s in found}
    out: list[str] = []
    for s in found:
        if s.type == "PMBR" and "gpt" in types:
            continue
        text = s.describe()
        if text not in out:
            out.append(text)
    return out


def _mount_device(m: mountinfo.Mount, sys: Path) -> int | None:
    """The block device a mount is of: its major:minor, or its source's (btrfs shows an
    anonymous device number in mountinfo)."""
    if blockdev.node(m.dev, sys) is not None:
        return m.dev
    try:
        return blockdev.device_number(m.source)
    except OSError:
        return None


@dataclass(frozen=True)
class Usage:
    """What uses the target: each a phrase for the refusal."""

    mounted: tuple[str, ...] = ()
    swap: tuple[str, ...] = ()
    running_root: bool = False

    def describe(self) -> list[str]:
        out = [f"is mounted at {m}" for m in self.mounted]
        out += [f"holds swap ({s})" for s in self.swap]
        if self.running_root:
            out.append("backs the running root")
        return out


def target_devices(target: Path, sys: Path = blockdev.SYS) -> set[int]:
    """The devices writing `target` would destroy: the device (or the loop devices over an
    image file), its partitions and everything stacked on them."""
    dev = blockdev.device_number(target)
    base = [dev] if dev is not None else blockdev.loops_of(target, sys)
    return blockdev.stacked_on(base, sys)


def usage(
    devs: set[int],
    mounts: Sequence[mountinfo.Mount],
    swaps: Sequence[blockdev.Swap],
    sys: Path = blockdev.SYS,
    *,
    image: os.stat_result | None = None,
) -> Usage:
    """Who uses the devices `devs` (target_devices()) now; `image`: the target's stat
    when it is an image file (which may itself be a swap file)."""
    mounted = []
    root_devs: set[int] = set()
    for m in mounts:
        dev = _mount_device(m, sys)
        if m.mount_point in ROOT_MOUNTS and dev is not None:
            root_devs |= blockdev.underneath(dev, sys)
        if dev is not None and dev in devs:
            mounted.append(f"{m.mount_point} ({blockdev.name(dev, sys)})")
    swap = []
    for s in swaps:
        try:
            st = os.stat(s.filename)
        except OSError:
            continue
        if s.kind == "partition":
            on_target = st.st_rdev in devs
        else:  # a swap file: the image itself, or a file on a filesystem on the target
            same = image is not None and (st.st_dev, st.st_ino) == (image.st_dev, image.st_ino)
            on_target = same or st.st_dev in devs
        if on_target:
            swap.append(s.filename)
    return Usage(tuple(dict.fromkeys(mounted)), tuple(swap), bool(root_devs & devs))


def _all_mounts() -> list[mountinfo.Mount]:
    """Our mount namespace's mounts, and PID 1's where we can read them (a private
    namespace does not show what the host has mounted)."""
    out: list[mountinfo.Mount] = []
    for path in ("/proc/self/mountinfo", "/proc/1/mountinfo"):
        try:
            out.extend(mountinfo.read(path))
        except OSError:
            continue
    return out


def check(target: Path, *, wipe: bool) -> None:
    """Refuse (one line naming everything found) to write over a target that is in use,
    or that holds anything unless `wipe`."""
    image = os.stat(target) if blockdev.device_number(target) is None else None
    devs = target_devices(target)
    used = usage(devs, _all_mounts(), blockdev.swaps(), image=image).describe()
    found = describe_signatures(signatures(target))
    if used:
        what = ", ".join([*used, *_has(found)])
        die(f"refusing to install to {target}: it {what}",
            hint="unmount it, turn its swap off (--wipe does not override this)")  # fmt: skip
    if found and not wipe:
        die(f"refusing to install to {target}: it {', '.join(_has(found))}",
            hint="add --wipe to destroy everything on it")  # fmt: skip


def _has(found: Sequence[str]) -> list[str]:
    return [f"has {', '.join(found)}"] if found else []
