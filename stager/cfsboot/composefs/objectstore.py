"""A content-addressed directory of files named `XX/REST` by their fs-verity digest.

This is the `objects/` directory of a repository and also what C
`mkcomposefs --digest-store=DIR` fills. An object is published atomically:
its content is written under a temporary name (an O_TMPFILE where the
filesystem has it), synced, fs-verity is enabled where the filesystem can,
and only then is it linked under its final name. Nobody ever sees a partial
object under a digest name.

Publishing one object at a time costs an fsync per file, which dominates a large
import. `batch()` defers that: objects are staged without fsync, one syncfs() makes
them all durable before they are renamed into place and a second one makes the names
durable, so the invariant above holds. The writeback of what is staged starts at once
(sync_file_range; small objects: the import's write-back thread, objectsink.py).

Copies write whole blocks with O_DIRECT where that pays (directio); add_fd_hashed hashes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cfsboot.composefs.directio import (
    COPY_CHUNK,
    DIRECT_ALIGN,
    Direct,
    cached_pages,
    copy_buffer,
    copy_fd_direct,
    read_chunk,
    reflink,
    write_chunk,
)
from cfsboot.composefs.staged import DIR_MODE as DIR_MODE  # re-exported
from cfsboot.composefs.staged import make_dir, move_staged
from cfsboot.errors import die
from cfsboot.linux.fsutil import fsync_dir, link_fd, umask_hides
from setuproot.contract import HashAlg
from setuproot.verity import (
    NoVerity,
    VerityAlreadyEnabled,
    VerityBusy,
    VerityUnsupported,
    enable_verity,
    measure_verity,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    import ctypes

OBJECT_MODE = 0o644  # objects are read by overlayfs on behalf of every user
STAGING_PREFIX = ".staging-"
TEMP_OBJECT_PREFIX = ".tmp-"  # an object written where O_TMPFILE is missing: XX/.tmp-RANDOM
ENABLE_RETRIES = 5


# libc through ctypes, loaded at the first syncfs: `cfsboot status` reads objects only.
def __getattr__(name: str) -> ctypes.CDLL:
    if name == "_libc":
        import ctypes

        lib = globals()["_libc"] = ctypes.CDLL(None, use_errno=True)
        return lib
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _loaded_libc() -> ctypes.CDLL:
    """`_libc`, loaded now if no call has yet (a test may have replaced it)."""
    lib: ctypes.CDLL | None = globals().get("_libc")
    return lib if lib is not None else __getattr__("_libc")


def syncfs(fd: int) -> None:
    """syncfs(2): flush the whole filesystem holding `fd` (Python has no wrapper)."""
    import ctypes

    if _loaded_libc().syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def _rmtree(path: Path) -> None:
    import shutil  # only here: it imports bz2 and lzma

    shutil.rmtree(path, ignore_errors=True)


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages


def start_writeback(fd: int) -> None:
    """sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): start writing the file's data
    now, without waiting (no durability: the batch's syncfs gives that), so that the disk
    works while the import goes on, not all at the batch's end. Ignored where the kernel
    or the filesystem lacks it."""
    import ctypes

    _loaded_libc().sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), SYNC_FILE_RANGE_WRITE)


Filler = Callable[[int], object]  # True: no start_writeback (written direct, or left to syncfs)


class ObjectStore:
    """Objects named by fs-verity digest under `root` (XX/REST).

    `require_verity`: every object must get fs-verity and its measured digest
    must equal its name (a secure repository); otherwise fs-verity is enabled
    where the filesystem supports it and skipped silently where it does not.
    """

    def __init__(self, root: Path, alg: HashAlg, *, require_verity: bool = False) -> None:
        self.root = Path(root)
        self.alg = HashAlg(alg)
        self.require_verity = require_verity
        self._verity_works: bool | None = None  # learnt from the first object
        self._mutex = threading.Lock()
        self._batch_depth = 0
        self._staging: Path | None = None
        self._pending: dict[str, str] = {}  # hex -> staged file, during a batch
        self._staged_dirs: set[str] = set()  # the STAGING/XX made
        self._known_dirs: set[str] = set()
        self._missing_dirs: dict[str, bool] = {}  # XX/ -> missing from objects/ (_unseen)
        self._strays = False  # a staged write failed (_unstage)
        self._root = os.fspath(self.root)  # per-object paths: pathlib costs more than syscalls
        self._reflink_works: bool | None = None
        self._direct = Direct()  # what O_DIRECT does here, learnt likewise
        self._need_chmod: bool | None = None  # fchmod each object? learnt at the first write

    # -- names -------------------------------------------------------------------------

    def check_hex(self, hexdigest: str) -> str:
        if len(hexdigest) != self.alg.hex_len or hexdigest.strip("0123456789abcdef"):
            raise ValueError(f"not a lowercase {self.alg} hex digest: {hexdigest!r}")
        return hexdigest

    def path(self, hexdigest: str) -> Path:
        return Path(self._path(hexdigest))

    def _path(self, hexdigest: str) -> str:
        self.check_hex(hexdigest)
        return f"{self._root}/{hexdigest[:2]}/{hexdigest[2:]}"

    def contains(self, hexdigest: str) -> bool:
        """Is the object present (or staged in the current batch)?"""
        with self._mutex:
            staged = hexdigest in self._pending
        return staged or os.path.exists(self.path(hexdigest))

    # -- publishing --------------------------------------------------------------------

    def add_bytes(
        self,
        hexdigest: str,
        data: bytes | bytearray | memoryview,
        *,
        aligned: bool = False,
        writeback: bool = True,
    ) -> bool:
        """Store `data` (whose digest the caller computed) unless already present; True when
        this call wrote it. `aligned`: `data` starts on a page (a directio.BufferPool view),
        so its whole blocks may go to the disk with O_DIRECT where that pays (_write_direct).
        `writeback` False: in a batch, the pages are left to its syncfs (start_writeback)."""
        d = self._direct

        def fill(fd: int) -> bool | None:
            view = memoryview(data)
            direct = aligned and len(view) >= DIRECT_ALIGN and d.write is not False
            if direct and self._write_direct():
                os.ftruncate(fd, len(view))  # as add_fd_hashed: the size first
                used = write_chunk(fd, view, 0, direct=True)
                d.learn_write(used)
                return used or not writeback
            while view:
                view = view[os.write(fd, view) :]
            return not writeback

        return self._add(hexdigest, fill, len(data))

    def add_fd(self, hexdigest: str, src: int, size: int) -> None:
        """Store the first `size` bytes of the open file `src` unless already present."""

        def fill(fd: int) -> None:
            # Reflinks fail the same way for every file of one source filesystem: try once.
            if self._reflink_works is not False:
                self._reflink_works = reflink(src, fd)
                if self._reflink_works:
                    return
            self._copy(src, fd, size)

        self._add(hexdigest, fill, size)

    def _copy(
        self, src: int, dst: int, size: int, feed: Callable[[memoryview], object] | None = None
    ) -> None:
        copy_fd_direct(src, dst, size, self._direct, feed=feed, write=self._write_direct())

    def _write_direct(self) -> bool:
        """O_DIRECT? Not where fs-verity may be enabled: it reads files back, from the cache."""
        return self._verity_works is False and not self.require_verity

    def add_fd_hashed(self, src: int, size: int) -> str:
        """add_fd of the first `size` bytes of `src`, hashed as they are copied (read once):
        their fs-verity hex digest. Up to COPY_CHUNK bytes: read, hashed, written if new.
        Bigger, in a batch: copied to a temporary name while hashed, then renamed (deleted
        if a duplicate). Outside a batch or with reflinks: hashed, then add_fd."""
        from cfsboot.composefs import fsverity  # hashlib: not on every command's path

        if size <= COPY_CHUNK and self._reflink_works is False:
            buf = copy_buffer()
            d = self._direct
            rdirect = d.read is not False and size >= DIRECT_ALIGN and cached_pages(src) == 0
            got, rused = read_chunk(src, buf, size, 0, direct=rdirect)
            if rused is not None:
                d.read = rused
            mv = buf[:size]
            if got != size:
                raise OSError(errno.EIO, f"file shrank while it was copied ({got} of {size} bytes)")
            hexdigest = fsverity.digest_bytes(mv, self.alg).hex()

            def fill(fd: int) -> None:
                direct = d.write is not False and self._write_direct()
                if direct and size >= DIRECT_ALIGN:
                    os.ftruncate(fd, size)
                d.learn_write(write_chunk(fd, mv, 0, direct=direct))

            self._add(hexdigest, fill, size)
            return hexdigest
        with self._mutex:
            staging = self._ensure_staging() if self._batch_depth > 0 else None
        if staging is None or self._reflink_works is not False:
            hexdigest = fsverity.digest_fd(src, self.alg, threads=1, size=size).hex()
            self.add_fd(hexdigest, src, size)
            return hexdigest
        return self._add_streamed(staging, src, size)

    def _add_streamed(self, staging: Path, src: int, size: int) -> str:
        tmp = f"{staging}/{TEMP_OBJECT_PREFIX}{os.urandom(8).hex()}"
        from cfsboot.composefs import fsverity  # hashlib: not on every command's path

        hasher = fsverity.FsVerityHasher(self.alg)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, OBJECT_MODE)
            try:
                self._fill(fd, lambda f: self._copy(src, f, size, hasher.update), size, tmp)
                start_writeback(fd)
            finally:
                os.close(fd)
            hexdigest = hasher.hexdigest()
            with self._mutex:
                present = hexdigest in self._pending or os.path.exists(self._path(hexdigest))
                if not present:
                    staged = self._pending[hexdigest] = self._staged_name(hexdigest)
            if present:
                os.unlink(tmp)
                return hexdigest
            try:
                os.rename(tmp, staged)
                self._seal_path(staged, hexdigest)
            except BaseException:
                self._unstage(hexdigest)
                raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return hexdigest

    def _unseen(self, sub: str) -> bool:
        """In a batch: objects/`sub` was missing when the batch first looked: its objects are
        new (one added meanwhile without the lock is staged again, renamed over at the end)."""
        if not self._batch_depth:
            return False
        missing = self._missing_dirs.get(sub)
        if missing is None:
            missing = self._missing_dirs[sub] = not os.path.lexists(f"{self._root}/{sub}")
        return missing

    def _add(self, hexdigest: str, fill: Filler, size: int) -> bool:
        target = self._path(hexdigest)
        if not self._unseen(hexdigest[:2]) and os.path.exists(target):
            return False
        with self._mutex:
            if hexdigest in self._pending:
                return False
            deferred = self._batch_depth > 0
            if deferred:
                # Reserve the name now so that another thread skips this object.
                staged = self._pending[hexdigest] = self._staged_name(hexdigest)
        if deferred:
            try:
                self._write_file(staged, hexdigest, fill, size, sync=False)
            except BaseException:
                self._unstage(hexdigest)
                raise
            return True
        return self._write_now(Path(target), hexdigest, fill, size)

    def _unstage(self, hexdigest: str) -> None:
        """A staged write failed: its file may be left in the staged XX/ (move_staged)."""
        with self._mutex:
            self._pending.pop(hexdigest, None)
            self._strays = True

    def _ensure_dir(self, sub: str) -> None:
        if sub in self._known_dirs:
            return
        if make_dir(f"{self._root}/{sub}"):
            fsync_dir(self.root)
        self._known_dirs.add(sub)

    def _write_now(self, target: Path, hexdigest: str, fill: Filler, size: int) -> bool:
        self._ensure_dir(hexdigest[:2])
        parent = target.parent
        try:
            fd = os.open(parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, OBJECT_MODE)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            return self._write_named(target, hexdigest, fill, size)
        ro = -1
        try:
            self._fill(fd, fill, size, target)
            os.fsync(fd)
            # fs-verity needs a read-only descriptor and no writable one anywhere.
            ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            os.close(fd)
            fd = -1
            self._seal(ro, hexdigest, target)
            try:
                link_fd(ro, target)
            except FileExistsError:
                return False  # another writer published the same content meanwhile
        finally:
            for f in (fd, ro):
                if f >= 0:
                    os.close(f)
        fsync_dir(parent)
        return True

    def _write_named(self, target: Path, hexdigest: str, fill: Filler, size: int) -> bool:
        """The same without O_TMPFILE: a hidden temp name next to the target."""
        parent = target.parent
        tmp = parent / f"{TEMP_OBJECT_PREFIX}{os.urandom(8).hex()}"
        linked = False
        try:
            self._write_file(tmp, hexdigest, fill, size, sync=True)
            try:
                os.link(tmp, target)
                linked = True
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(parent)
        return linked

    def _write_file(
        self, path: str | Path, hexdigest: str, fill: Filler, size: int, *, sync: bool
    ) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, OBJECT_MODE)
        try:
            direct = self._fill(fd, fill, size, path)
            if sync:
                os.fsync(fd)
            elif direct is not True:  # (a direct write leaves its tail to the batch's syncfs)
                start_writeback(fd)
        finally:
            os.close(fd)
        self._seal_path(path, hexdigest)

    def _seal_path(self, path: str | Path, hexdigest: str) -> None:
        if self._verity_works is False and not self.require_verity:
            return
        ro = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._seal(ro, hexdigest, path)
        finally:
            os.close(ro)

    def _fill(self, fd: int, fill: Filler, size: int, path: str | Path) -> object:
        if self._need_chmod is None:
            self._need_chmod = umask_hides(OBJECT_MODE)
        if self._need_chmod:
            os.fchmod(fd, OBJECT_MODE)
        return fill(fd)  # fillers write exactly `size` bytes or raise

    def _enable(self, ro_fd: int, path: str | Path) -> None:
        for attempt in range(ENABLE_RETRIES + 1):
            try:
                enable_verity(ro_fd, self.alg, path=str(path))
                return
            except VerityAlreadyEnabled:
                return  # a reflinked or hardlinked source that already had it
            except VerityBusy:
                # A child forked by another thread may still hold our (close-on-exec)
                # writable descriptor until it execs: wait a moment for that.
                if attempt == ENABLE_RETRIES:
                    raise
                time.sleep(0.001 * (attempt + 1))

    def _seal(self, ro_fd: int, hexdigest: str, path: str | Path) -> None:
        """Enable fs-verity and check the kernel's digest against the name."""
        if self._verity_works is False and not self.require_verity:
            return
        try:
            self._enable(ro_fd, path)
            alg, digest = measure_verity(ro_fd, path=str(path))
        except (VerityUnsupported, NoVerity) as e:
            if self.require_verity:
                die(
                    f"cannot enable fs-verity on {path}: {e.strerror}",
                    hint="the repository is secure (its meta.json has fs-verity);"
                    " use a filesystem with fs-verity (ext4 -O verity, btrfs)",
                )
            self._verity_works = False
            return
        self._verity_works = True
        if alg is not self.alg or digest.hex() != hexdigest:
            die(
                f"object {path}: fs-verity measured {alg}:{digest.hex()},"
                f" expected {self.alg}:{hexdigest}"
            )

    # -- batches -----------------------------------------------------------------------

    def _ensure_staging(self) -> Path:
        if self._staging is None:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / f"{STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
            os.mkdir(path, 0o700)
            self._staging, self._staged_dirs = path, set()
        return self._staging

    def _staged_name(self, hexdigest: str) -> str:
        """Where a batch stages an object (under _mutex): XX/REST as in objects/ (staged.py),
        not all in one directory, whose lock the writer threads would queue on."""
        sub = f"{self._ensure_staging()}/{hexdigest[:2]}"
        if sub not in self._staged_dirs:
            make_dir(sub)  # with its final mode: it may become objects/XX as it is
            self._staged_dirs.add(sub)
        return f"{sub}/{hexdigest[2:]}"

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Defer durability to one syncfs at the end; objects appear when the batch ends.

        If the body raises, the staged objects are thrown away.
        """
        with self._mutex:
            self._batch_depth += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._mutex:
                self._batch_depth -= 1
                last = self._batch_depth == 0
            if last:
                if ok:
                    self.flush()
                else:
                    self._discard()

    def flush(self) -> None:
        """Make every staged object durable, then move it to its final name."""
        with self._mutex:
            pending, self._pending = self._pending, {}
            self._missing_dirs = {}
            staging, strays = self._staging, self._strays
            ended = self._batch_depth == 0
            if ended:
                self._staging, self._strays = None, False
        if pending:
            dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                syncfs(dfd)  # data first: no name may point at unwritten data
                dirs = self._known_dirs
                move_staged(self._root, pending, dirs, whole_dirs=ended, exact=not strays)
                syncfs(dfd)  # (the new XX/ as well)
            finally:
                os.close(dfd)
        if staging is not None and ended:
            _rmtree(staging)

    def _discard(self) -> None:
        with self._mutex:
            staging, self._staging, self._strays = self._staging, None, False
            self._pending, self._missing_dirs = {}, {}
        if staging is not None:
            _rmtree(staging)
