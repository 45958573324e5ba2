"""Bytes an upgrade moves: `cfsboot switch` from the test OS v1 to v2 through a local registry.

v1 and v2 (vm-tests/osimage.py) share their big base layer and differ in
their small top layer. v1 is installed with `cfsboot install to-filesystem`
from the registry onto an ext4 filesystem (loop device) that holds the
physical root and the ESP; then `cfsboot switch` to v2 runs with /var/tmp
(skopeo's pull directory) bound onto that filesystem too, as on a booted
system, where /var/tmp is on the physical root.

- fetched: what the registry sent during the switch (its access log: the
  bytes of every response). Reference: the layers of v2 the repository
  lacks (compressed, as the manifest gives them) + v2's manifest and config.
- written: what the filesystem wrote during the switch
  (/sys/fs/ext4/DEV/lifetime_write_kbytes, synced before and after: data,
  metadata and journal). Reference: the size of every file the switch
  created or changed there (new objects, the EROFS image, streams, state,
  boot entries and boot files). The process tree's own count (write_bytes
  less cancelled_write_bytes of /proc/self/io, which takes in reaped
  children) is printed too: it also counts what went to tmpfs (/run), which
  never reaches a disk.

Goal for both: <= 1.1. Needs root (loop mount, mount namespace) and the
docker-registry, skopeo and mkfs.ext4 tools; builds the test OS images first
when their cache is stale (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")]
sys.path.insert(0, str(HERE))

from cfstest import cli  # noqa: E402
from figures import figure  # noqa: E402
from reference import vm_module  # noqa: E402

PORT = 5091  # apart from the VM tests' registry (5000) and test_registry's (5055)
FS_SIZE = "8G"


def _missing() -> str | None:
    for tool in ("docker-registry", "skopeo", "mkfs.ext4", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if os.geteuid() != 0:
        return "needs root (loop mount, mount namespace)"
    return None


def _fs_written_kb(mnt: Path) -> int:
    source = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", "--target", str(mnt)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["sync", "-f", str(mnt)], check=True)
    kbytes = Path(f"/sys/fs/ext4/{Path(source).name}/lifetime_write_kbytes").read_text()
    return int(kbytes)


def _io_written() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


def _files(top: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every regular file under top (not under skip): (inode, size, mtime_ns)."""
    out = {}
    for dirpath, dirs, names in os.walk(top):
        if Path(dirpath) == skip:
            dirs.clear()
            continue
        for n in names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if os.path.isfile(p) and not os.path.islink(p):
                out[p] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _served_bytes(log: Path, start: int) -> tuple[int, int]:
    """(bytes of every response, number of requests) in the access log since byte `start`."""
    total = requests = 0
    with open(log, "rb") as f:
        f.seek(start)
        for line in f.read().decode(errors="replace").splitlines():
            parts = line.split('"')
            if len(parts) < 3 or not parts[1].startswith(("GET ", "HEAD ")):
                continue
            status_size = parts[2].split()
            requests += 1
            if len(status_size) >= 2 and status_size[1].isdigit():
                total += int(status_size[1])
    return total, requests


def _must_fetch(layout: Path, tag: str, have: set[str]) -> int:
    """The layers of `tag` not in `have` (compressed) + its manifest and config."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == tag)
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_text())
    layers = sum(d["size"] for d in manifest["layers"] if d["digest"] not in have)
    return int(layers + desc["size"] + manifest["config"]["size"])


REF_NAME = "org.opencontainers.image.ref.name"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(the same: one switch)")
    parser.parse_args(argv)
    reason = _missing()
    if reason:
        print(f"upgrade benchmark skipped: {reason}")
        return 0
    osimage, registry = vm_module("osimage"), vm_module("registry")
    images = osimage.ensure_images(("v1", "v2"))
    # Not under /var/tmp (the switch runs with another directory bound there): in /tmp,
    # which is on the disk here (the filesystem image is sparse: what it holds, 2 GB).
    work = Path(tempfile.mkdtemp(prefix="cfsboot-bench-upgrade."))
    mnt = work / "mnt"
    mnt.mkdir()
    fs = work / "fs.img"
    subprocess.run(["truncate", "-s", FS_SIZE, str(fs)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    subprocess.run(["mount", "-o", "loop", str(fs), str(mnt)], check=True)
    try:
        with registry.running(work / "registry", port=PORT, access_log=True) as reg:
            for v in ("v1", "v2"):
                reg.push(images[v].layout, v)
            env = {**cli.ENV, **reg.client_env()}
            root, esp, vartmp = mnt / "root", mnt / "esp", mnt / "vartmp"
            for d in (root, esp, vartmp):
                d.mkdir()
            cli.run("install", "to-filesystem", reg.ref("v1"), root, "--esp", esp, "-q", env=env)
            have = {layer["digest"] for layer in images["v1"].layers}
            log = reg.workdir / "registry.log"
            before = (_files(mnt, vartmp), _fs_written_kb(mnt), _io_written(), log.stat().st_size)
            switch = cli.argv(
                "switch", reg.ref("v2"), "-q",
                "--sysroot", root,
                "--esp", esp,
                "--run-dir", mnt / "run",
            )  # fmt: skip
            bind = 'mount --bind "$0" /var/tmp && exec "$@"'
            subprocess.run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", bind, vartmp, *switch],
                env=env,
                check=True,
                stdin=subprocess.DEVNULL,
            )
            after = (_files(mnt, vartmp), _fs_written_kb(mnt), _io_written(), log.stat().st_size)
            served, requests = _served_bytes(log, before[3])
            must = _must_fetch(images["v2"].layout, "v2", have)
        changed = sum(
            size
            for p, (ino, size, mtime) in after[0].items()
            if before[0].get(p) != (ino, size, mtime)
        )
        fs_bytes = (after[1] - before[1]) * 1024
        io_bytes = after[2] - before[2]
        print(
            f"switch v1 -> v2: registry sent {served / 1e6:.2f} MB in {requests} requests;"
            f" filesystem wrote {fs_bytes / 1e6:.2f} MB, the process tree {io_bytes / 1e6:.2f} MB;"
            f" new or changed files {changed / 1e6:.2f} MB (load average {os.getloadavg()[0]:.2f})"
        )
        figure("upgrade bytes fetched", served / 1e6, must / 1e6, "<= 1.1", unit="MB")
        figure("upgrade bytes written", fs_bytes / 1e6, changed / 1e6, "<= 1.1", unit="MB")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
