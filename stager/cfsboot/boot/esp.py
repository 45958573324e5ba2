"""Access to an EFI System Partition (or GRUB's /boot): a mounted directory, or mtools on an image.

Both backends take paths relative to the partition's root (`loader/entries/x.conf`)
and offer the same operations. Writes replace files so that a crash leaves the
old or the new contents under the name, never a mix:

- `DirEsp` (a mounted filesystem, the booted system's case): temp name, fsync,
  rename, fsync the directory (cfsboot.linux.fsutil).
- `MtoolsEsp` (an image file or block device at a byte offset, for installing
  from a host that cannot mount vfat): FAT has no atomic rename-over, so a
  replace is a short protocol in which every step leaves one complete copy
  under a name `recover()` understands, and the image is fsynced between steps:

      write  .NAME.cfsboot-new      (a crash here: NAME untouched, the partial copy is dropped)
      rename NAME -> .NAME.cfsboot-old
      rename .NAME.cfsboot-new -> NAME   (a crash before this: recover() rolls forward)
      delete .NAME.cfsboot-old

  Neither name ends in `.conf` or `.efi`, so no boot loader picks a leftover up.
  mtools keeps the 8.3 case flags of a rename's source, so a name that fits 8.3
  in lower case (`vmlinuz`, `initrd`, `grubx64.efi`) is stored as its upper-case
  short name; FAT, firmware and boot loaders compare names case-insensitively,
  and so must callers that compare listed names.

`exchange(a, b)` swaps two names of one directory in one step, the way bootc
switches `loader/entries.staged` with `loader/entries`: renameat2(RENAME_EXCHANGE)
on a mounted filesystem (Linux's vfat has it since 6.0); for an image that mtools
writes, a direct edit of the FAT directory (cfsboot.boot.fat). Neither falls back to a
non-atomic swap.
"""

from __future__ import annotations

import abc
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR

from cfsboot.errors import CfsbootError
from cfsboot.linux import fsutil
from cfsboot.linux.lazyrun import run

NEW_SUFFIX = ".cfsboot-new"
KEEP_READ_MAX = 64 << 10  # MtoolsEsp keeps files read up to this size (boot entries, menus)
OLD_SUFFIX = ".cfsboot-old"


class EspError(CfsbootError):
    """A missing or wrong-kind path on the ESP, or an ESP that cannot be read."""


@dataclass(frozen=True, order=True)
class EspEntry:
    name: str
    is_dir: bool


def split_path(path: str) -> tuple[str, ...]:
    """`/loader//entries/` -> ('loader', 'entries'); refuses `.` and `..` (no escaping the root)."""
    parts = tuple(p for p in path.split("/") if p)
    if any(p in (".", "..") for p in parts):
        raise EspError(f"invalid ESP path {path!r}: '.' and '..' are not allowed")
    return parts


def _fold(parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.casefold() for p in parts)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _leftover_target(name: str) -> tuple[str, str] | None:
    """('NAME', suffix) when `name` is one of the replace protocol's temporary names."""
    for suffix in (NEW_SUFFIX, OLD_SUFFIX):
        if name.startswith(".") and name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[1 : -len(suffix)], suffix
    return None


class Esp(abc.ABC):
    """Operations cfsboot needs on the ESP; paths are relative to its root."""

    unchanging = False  # a view nothing changes (espview): what is read may be kept

    @abc.abstractmethod
    def listdir(self, path: str = "") -> list[EspEntry]:
        """A directory's entries, sorted by name."""

    @abc.abstractmethod
    def read(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Create or replace a file (old or new after a crash). The parent must exist."""

    @abc.abstractmethod
    def install(self, path: str, src: Path) -> None:
        """Like write, with the contents copied from a local file (kernels, initrds, UKIs)."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Delete a file."""

    @abc.abstractmethod
    def remove_tree(self, path: str) -> None:
        """Delete a directory and everything in it."""

    @abc.abstractmethod
    def _mkdir_one(self, path: str) -> None: ...

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move a file or directory to a name that does not exist yet."""

    @abc.abstractmethod
    def stat(self, path: str) -> EspEntry | None:
        """The entry at `path`, or None if nothing is there. The root is a directory."""

    @abc.abstractmethod
    def exchange(self, a: str, b: str) -> None:
        """Swap what two existing names (files or directories) of one directory point to.

        Atomic and durable: a crash leaves `a` with its old or its new contents,
        never neither. Through mtools, `b` may go missing in a crash (see
        cfsboot.boot.fat), so pass the name that must always exist as `a`
        (`loader/entries`) and the staged one as `b`.
        """

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_dir(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and st.is_dir

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        """Create a directory (and missing parents); an existing directory is fine."""
        parts = split_path(path)
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            st = self.stat(sub)
            if st is None:
                if i < len(parts) and not parents:
                    raise EspError(f"cannot create {path} on the ESP: {sub} does not exist")
                self._mkdir_one(sub)
            elif not st.is_dir:
                raise EspError(f"cannot create {path} on the ESP: {sub} is a file")

    def write_text(self, path: str, text: str) -> None:
        self.write(path, text.encode("utf-8"))

    def read_text(self, path: str) -> str:
        return self.read(path).decode("utf-8")

    def recover(self, path: str = "") -> list[str]:
        """Clean up after writes a crash interrupted, in `path` and below; returns what was done.

        Temp files of atomic renames are garbage; a replace through mtools is
        finished (or undone) so that only NAME remains.
        """
        base = "/".join(split_path(path))
        entries = self.listdir(base)
        done: list[str] = []
        for e in entries:
            if not e.is_dir and fsutil.TEMP_MARKER in e.name:
                self.remove(_join(base, e.name))
                done.append(f"removed {_join(base, e.name)}")
        targets = {t[0] for e in entries if not e.is_dir and (t := _leftover_target(e.name))}
        for name in sorted(targets):
            done += self._finish_replace(base, name)
        for e in entries:
            if e.is_dir:
                done += self.recover(_join(base, e.name))
        return done

    def _finish_replace(self, directory: str, name: str) -> list[str]:
        """Bring NAME, .NAME.cfsboot-new and .NAME.cfsboot-old back to just NAME."""
        names = {e.name for e in self.listdir(directory)}
        path = _join(directory, name)
        new_name, old_name = f".{name}{NEW_SUFFIX}", f".{name}{OLD_SUFFIX}"
        done: list[str] = []
        if old_name in names and name not in names:
            # The old copy is only moved aside once the new one is complete: roll
            # forward (or, should the new one be gone too, put the old one back).
            src = _join(directory, new_name if new_name in names else old_name)
            self.rename(src, path)
            done.append(f"renamed {src} to {path}")
            names.discard(src.rsplit("/", 1)[-1])
        for leftover in (old_name, new_name):
            if leftover in names:
                self.remove(_join(directory, leftover))
                done.append(f"removed {_join(directory, leftover)}")
        return done

    def _exchange_names(self, a: str, b: str) -> tuple[str, str, str]:
        """(parent, name of a, name of b) for an exchange, after checking both exist."""
        pa, pb = split_path(a), split_path(b)
        if not pa or not pb:
            raise EspError("cannot exchange the ESP root")
        if pa[:-1] != pb[:-1]:
            raise EspError(f"cannot exchange {a} and {b} on the ESP: not in the same directory")
        if pa == pb:
            raise EspError(f"cannot exchange {a} with itself on the ESP")
        for p in (a, b):
            if self.stat(p) is None:
                raise EspError(f"cannot exchange {a} and {b} on the ESP: {p} does not exist")
        return "/".join(pa[:-1]), pa[-1], pb[-1]

    def _parent_of(self, path: str) -> tuple[str, str]:
        parts = split_path(path)
        if not parts:
            raise EspError("the ESP root is not a file")
        parent = "/".join(parts[:-1])
        if not self.is_dir(parent):
            raise EspError(f"cannot write {path} on the ESP: {parent or '/'} is not a directory")
        return parent, parts[-1]


class DirEsp(Esp):
    """An ESP (or /boot) mounted at `root`. `file_mode` None suits vfat, which has no modes."""

    def __init__(self, root: Path, *, file_mode: int | None = None) -> None:
        self.root = root
        self.file_mode = file_mode

    def _abs(self, path: str) -> Path:
        return self.root.joinpath(*split_path(path))

    def stat(self, path: str) -> EspEntry | None:
        parts = split_path(path)
        try:
            st = os.lstat(self._abs(path))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        return EspEntry(parts[-1] if parts else "", S_ISDIR(st.st_mode))

    def listdir(self, path: str = "") -> list[EspEntry]:
        if not self.is_dir(path):
            raise EspError(f"{path or '/'} is not a directory on the ESP ({self.root})")
        with os.scandir(self._abs(path)) as it:
            return sorted(EspEntry(e.name, e.is_dir(follow_symlinks=False)) for e in it)

    def read(self, path: str) -> bytes:
        st = self.stat(path)
        if st is None or st.is_dir:
            raise EspError(f"no file {path} on the ESP ({self.root})")
        return self._abs(path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        # An mtools replace of this name may have been interrupted (install-time crash).
        self._finish_replace(*self._parent_of(path))
        fsutil.write_file_atomic(self._abs(path), data, self.file_mode)

    def install(self, path: str, src: Path) -> None:
        self._finish_replace(*self._parent_of(path))
        fsutil.copy_file_atomic(src, self._abs(path), self.file_mode)

    def remove(self, path: str) -> None:
        st = self.stat(path)
        if st is None or st.is_dir:
            raise EspError(f"no file {path} on the ESP ({self.root})")
        p = self._abs(path)
        p.unlink()
        fsutil.fsync_dir(p.parent)

    def remove_tree(self, path: str) -> None:
        st = self.stat(path)
        if not split_path(path) or st is None or not st.is_dir:
            raise EspError(f"no directory {path} on the ESP ({self.root})")
        p = self._abs(path)
        import shutil  # only here: it imports bz2 and lzma

        shutil.rmtree(p)
        fsutil.fsync_dir(p.parent)

    def _mkdir_one(self, path: str) -> None:
        p = self._abs(path)
        p.mkdir()
        fsutil.fsync_dir(p.parent)

    def rename(self, src: str, dst: str) -> None:
        if self.stat(src) is None:
            raise EspError(f"cannot rename {src} on the ESP: it does not exist")
        self._parent_of(dst)
        if self.exists(dst):
            raise EspError(f"cannot rename {src} to {dst} on the ESP: {dst} exists")
        s, d = self._abs(src), self._abs(dst)
        os.rename(s, d)
        fsutil.fsync_dir(d.parent)
        if s.parent != d.parent:
            fsutil.fsync_dir(s.parent)

    def exchange(self, a: str, b: str) -> None:
        parent, _, _ = self._exchange_names(a, b)
        try:
            from cfsboot.linux import syscalls

            syscalls.renameat2(self._abs(a), self._abs(b), syscalls.RENAME_EXCHANGE)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise EspError(
                    f"cannot exchange {a} and {b} on the ESP ({self.root}) atomically: "
                    f"the filesystem does not support RENAME_EXCHANGE ({e.strerror})",
                    hint="vfat supports it from Linux 6.0 on",
                ) from None
            raise EspError(
                f"cannot exchange {a} and {b} on the ESP ({self.root}): {e.strerror}"
            ) from None
        fsutil.fsync_dir(self._abs(parent))


class MtoolsEsp(Esp):
    """A FAT filesystem at byte `offset` of an image file or block device, through mtools."""

    def __init__(self, image: Path, offset: int = 0) -> None:
        self.image = image
        self.offset = offset
        # The directory tree (one mdir process) and small files (an mcopy each) read since
        # this object last changed the filesystem: reading a menu asks for the same ones again.
        self._tree: dict[tuple[str, ...], list[EspEntry]] | None = None
        self._contents: dict[tuple[str, ...], bytes] = {}

    def _forget(self) -> None:
        """Drop what was read: the filesystem is about to change, or just did."""
        self._tree = None
        self._contents.clear()

    @property
    def drive(self) -> str:
        """mtools' `-i` argument: `IMAGE@@OFFSET` when the filesystem does not start at 0."""
        return f"{self.image}@@{self.offset}" if self.offset else str(self.image)

    def _mtools(
        self, tool: str, *args: str, capture: bool = False, check: bool = True, writes: bool = True
    ) -> bytes:
        if writes:
            self._forget()
        try:
            # MTOOLS_SKIP_CHECK: mkfs.vfat geometries on image files fail mtools' sanity checks.
            proc = run(
                [tool, "-i", self.drive, *args],
                capture=capture,
                check=check,
                env={"MTOOLS_SKIP_CHECK": "1"},
            )
        finally:
            if writes:
                self._forget()
        return proc.stdout if capture else b""

    def _sync(self) -> None:
        # mtools writes through the page cache and never fsyncs: make each step durable
        # before the next, or the protocol's order is lost on power failure.
        fd = os.open(self.image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _m(path: str) -> str:
        return "::/" + "/".join(split_path(path))

    def _listing(self, path: str) -> list[EspEntry] | None:
        """A directory's entries; None if `path` is missing or is a file."""
        if self._tree is None:
            self._tree = self._mdir_tree()
        found = self._tree.get(_fold(split_path(path)))
        return None if found is None else list(found)

    def _mdir_tree(self) -> dict[tuple[str, ...], list[EspEntry]]:
        """Every directory's entries (keys case-folded, as FAT compares names), from one
        recursive `mdir -/ -b`: one full path per line, directories with a trailing '/'."""
        proc = run(
            ["mdir", "-i", self.drive, "-/", "-b", "::/"],
            capture=True,
            check=False,
            env={"MTOOLS_SKIP_CHECK": "1"},
        )
        tree: dict[tuple[str, ...], list[EspEntry]] = {(): []}
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            if not proc.stdout and err.endswith('"::/" not found'):
                return tree  # what mdir says of an empty filesystem
            last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
            raise EspError(f"cannot read the ESP in {self.drive}: {last}")
        for line in proc.stdout.decode(errors="surrogateescape").splitlines():
            if not line.startswith("::/"):
                continue
            parts = split_path(line[len("::/") :])
            if not parts:
                continue
            is_dir = line.endswith("/")
            tree.setdefault(_fold(parts[:-1]), []).append(EspEntry(parts[-1], is_dir))
            if is_dir:
                tree.setdefault(_fold(parts), [])
        for entries in tree.values():
            entries.sort()
        return tree

    def stat(self, path: str) -> EspEntry | None:
        parts = split_path(path)
        if not parts:
            return EspEntry("", True)
        # FAT names are case-insensitive: match the way the filesystem does.
        want = parts[-1].casefold()
        entries = self._listing("/".join(parts[:-1])) or []
        return next((e for e in entries if e.name.casefold() == want), None)

    def listdir(self, path: str = "") -> list[EspEntry]:
        entries = self._listing(path)
        if entries is None:
            raise EspError(f"{path or '/'} is not a directory on the ESP ({self.drive})")
        return entries

    def read(self, path: str) -> bytes:
        key = _fold(split_path(path))
        if key in self._contents:
            return self._contents[key]
        st = self.stat(path)
        if st is None or st.is_dir:
            raise EspError(f"no file {path} on the ESP ({self.drive})")
        data = self._mtools("mcopy", "-n", self._m(path), "-", capture=True, writes=False)
        if len(data) <= KEEP_READ_MAX:
            self._contents[key] = data
        return data

    def write(self, path: str, data: bytes) -> None:
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="cfsboot-esp-") as tmp:
            tmp.write(data)
            tmp.flush()
            self.install(path, Path(tmp.name))

    def install(self, path: str, src: Path) -> None:
        parent, name = self._parent_of(path)
        self._finish_replace(parent, name)
        st = self.stat(path)
        if st is not None and st.is_dir:
            raise EspError(f"cannot write {path} on the ESP: it is a directory")
        new_name, old_name = f".{name}{NEW_SUFFIX}", f".{name}{OLD_SUFFIX}"
        new = _join(parent, new_name)
        self._mtools("mcopy", str(src), self._m(new))
        self._sync()
        if st is not None:
            self._mtools("mren", self._m(path), old_name)
            self._sync()
        self._mtools("mren", self._m(new), name)
        self._sync()
        if st is not None:
            self._mtools("mdel", self._m(_join(parent, old_name)))
            self._sync()

    def remove(self, path: str) -> None:
        st = self.stat(path)
        if st is None or st.is_dir:
            raise EspError(f"no file {path} on the ESP ({self.drive})")
        self._mtools("mdel", self._m(path))
        self._sync()

    def remove_tree(self, path: str) -> None:
        st = self.stat(path)
        if not split_path(path) or st is None or not st.is_dir:
            raise EspError(f"no directory {path} on the ESP ({self.drive})")
        self._mtools("mdeltree", self._m(path))
        self._sync()

    def _mkdir_one(self, path: str) -> None:
        self._mtools("mmd", self._m(path))
        self._sync()

    def rename(self, src: str, dst: str) -> None:
        if self.stat(src) is None:
            raise EspError(f"cannot rename {src} on the ESP: it does not exist")
        self._parent_of(dst)
        if self.exists(dst):
            raise EspError(f"cannot rename {src} to {dst} on the ESP: {dst} exists")
        self._mtools("mmove", self._m(src), self._m(dst))
        self._sync()

    def exchange(self, a: str, b: str) -> None:
        # Imported here: only an exchange edits FAT itself (and construct costs start-up time).
        from cfsboot.boot import fat

        parent, name_a, name_b = self._exchange_names(a, b)
        self._forget()
        try:
            with fat.FatFs.open(self.image, self.offset) as fs:
                fs.exchange(split_path(parent), name_a, name_b)
        except fat.FatError as e:
            raise EspError(
                f"cannot exchange {a} and {b} on the ESP ({self.drive}): {e.message}", hint=e.hint
            ) from None
