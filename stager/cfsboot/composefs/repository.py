"""The composefs repository: content-addressed objects, images, streams and tags.

Layout (composefs-rs's, so bootc and cfsctl can share it):

    meta.json            {"version": 1, "algorithm": "fsverity-sha512-12", "features": {...}}
    objects/XX/REST      file contents and images, named by fs-verity digest
    images/HEX           -> ../objects/XX/REST, the images that may be mounted
    images/refs/NAME     -> ../HEX (relative), tags: GC roots
    streams/NAME         -> ../objects/XX/REST
    streams/refs/NAME    -> ../NAME (relative), GC roots

A repository is secure when meta.json itself has fs-verity (then every object
must have it too) and insecure otherwise, exactly as composefs-rs decides.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from cfsboot.composefs.objectstore import DIR_MODE, ObjectStore
from cfsboot.errors import die
from cfsboot.jsondoc import Fields, parse_object
from cfsboot.linux.fsutil import fsync_dir, temp_name, write_file_atomic
from cfsboot.linux.lazylog import getLogger
from setuproot.contract import (
    IMAGES_DIR,
    OBJECTS_DIR,
    REFS_DIR,
    REPO_FORMAT_VERSION,
    REPO_META,
    REPO_MODE,
    STREAMS_DIR,
    HashAlg,
)
from setuproot.verity import NoVerity, VerityUnsupported, enable_verity, measure_verity

log = getLogger(__name__)  # imports logging when it logs (lazylog)

# Feature flags this version understands (meta.json "features", composefs-rs model:
# unknown incompatible => refuse; unknown read-only-compatible => do not write).
KNOWN_RO_COMPAT_FEATURES = frozenset({"v1_erofs"})


def meta_json(alg: HashAlg) -> bytes:
    """meta.json as composefs-rs writes it: pretty JSON and a newline."""
    meta = {
        "version": REPO_FORMAT_VERSION,
        "algorithm": alg.repo_name,
        "features": {"compatible": [], "read-only-compatible": [], "incompatible": []},
    }
    return (json.dumps(meta, indent=2) + "\n").encode()


def _check_name(name: str, what: str, *, nested: bool = False) -> list[str]:
    parts = name.split("/") if nested else [name]
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"invalid {what} name {name!r}")
    return parts


class Repository:
    """An opened composefs repository (see the module docstring for the layout)."""

    def __init__(self, path: Path, algorithm: HashAlg, *, insecure: bool, read_only: bool) -> None:
        self.path = Path(path)
        self.algorithm = algorithm
        self.insecure = insecure
        self.read_only = read_only
        self.objects = ObjectStore(self.path / OBJECTS_DIR, algorithm, require_verity=not insecure)
        self._lock_fd = -1
        self._lock_depth = 0
        self._lock_mutex = threading.Lock()

    def __repr__(self) -> str:
        mode = "insecure" if self.insecure else "secure"
        return f"Repository({str(self.path)!r}, {self.algorithm}, {mode})"

    # -- creating and opening ----------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        algorithm: HashAlg = HashAlg.SHA512,
        insecure: bool = False,
    ) -> Repository:
        """Create a repository (or open an existing one that uses the same algorithm)."""
        root = Path(path)
        algorithm = HashAlg(algorithm)
        meta = root / REPO_META
        if meta.exists():
            existing = _read_meta(meta)[0]
            if existing is not algorithm:
                die(
                    f"repository {root} already exists and uses {existing.repo_name},"
                    f" not {algorithm.repo_name}",
                    hint="one repository holds one digest algorithm; choose another directory",
                )
            return cls.open(root)
        inferred = _infer_algorithm(root / OBJECTS_DIR)
        if inferred is not None and inferred is not algorithm:
            die(
                f"{root} holds {inferred} objects (a repository without meta.json),"
                f" not {algorithm}",
                hint=f"use --hash {inferred}",
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(root, REPO_MODE)
        except FileExistsError:
            if not root.is_dir():
                die(f"{root} exists and is not a directory")
        os.chmod(root, REPO_MODE)
        for sub in (
            OBJECTS_DIR,
            IMAGES_DIR,
            f"{IMAGES_DIR}/{REFS_DIR}",
            STREAMS_DIR,
            f"{STREAMS_DIR}/{REFS_DIR}",
        ):
            (root / sub).mkdir(mode=DIR_MODE, exist_ok=True)
        if insecure:
            _write_meta(root, algorithm)
        elif not _write_meta_with_verity(root, algorithm):
            log.warning(
                "fs-verity is not supported on the filesystem of %s: the repository is"
                " insecure (its contents cannot be verified at boot)",
                root,
            )
        fsync_dir(root)
        fsync_dir(root.parent)
        return cls.open(root)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Repository:
        """Open an existing repository; secure if and only if meta.json has fs-verity."""
        root = Path(path)
        meta = root / REPO_META
        if not meta.exists():
            what = "has no meta.json" if root.is_dir() else "does not exist"
            die(
                f"no composefs repository at {root} ({what})",
                hint=f"create one with: cfsboot repo init {root}",
            )
        alg, read_only = _read_meta(meta)
        fd = os.open(meta, os.O_RDONLY | os.O_CLOEXEC)
        try:
            measure_verity(fd, path=str(meta))
            insecure = False
        except (VerityUnsupported, NoVerity):
            insecure = True
        finally:
            os.close(fd)
        return cls(root, alg, insecure=insecure, read_only=read_only)

    # -- locking -----------------------------------------------------------------------

    @contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[None]:
        """Hold the exclusive writer lock (flock on the repository directory).

        Re-entrant within one Repository object. If another process holds it,
        wait (saying so once on stderr) or, with wait=False, fail with a clear error.
        """
        if self.read_only:
            die(
                f"repository {self.path} uses features this cfsboot cannot write;"
                " it is read-only here",
                hint="upgrade cfsboot",
            )
        with self._lock_mutex:
            if self._lock_depth == 0:
                self._lock_fd = _take_lock(self.path, wait=wait)
            self._lock_depth += 1
        try:
            yield
        finally:
            with self._lock_mutex:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    os.close(self._lock_fd)  # closing the last descriptor releases the flock
                    self._lock_fd = -1

    def batch(self) -> AbstractContextManager[None]:
        """Context manager: publish many objects with one syncfs (see ObjectStore.batch)."""
        return self.objects.batch()

    # -- objects -----------------------------------------------------------------------

    def object_path(self, hexdigest: str) -> Path:
        return self.objects.path(hexdigest)

    def has_object(self, hexdigest: str) -> bool:
        return self.objects.contains(hexdigest)

    def ensure_object(self, data: bytes | bytearray, *, hexdigest: str | None = None) -> str:
        """Store `data` as an object (atomic, deduplicated); returns its hex digest.

        `hexdigest`, when the caller has just computed it from `data`, spares hashing
        `data` again.
        """
        if hexdigest is None:
            from cfsboot.composefs import fsverity  # hashlib and threads: not for reading

            hexdigest = fsverity.digest_bytes(data, self.algorithm).hex()
        self.objects.add_bytes(hexdigest, data)
        return hexdigest

    def ensure_object_from_file(self, src: Path | int, *, digest: bytes | None = None) -> str:
        """Store a file's content as an object; returns its hex digest.

        `digest` (raw bytes), when the caller already computed it, spares reading
        the file twice. A secure repository still checks it (the kernel measures
        the object); an insecure one trusts it, as nothing verifies its objects.
        """
        fd = src if isinstance(src, int) else os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if digest is None:
                from cfsboot.composefs import fsverity

                digest = fsverity.digest_fd(fd, self.algorithm)
            elif len(digest) != self.algorithm.digest_size:
                raise ValueError(
                    f"a {self.algorithm} digest has {self.algorithm.digest_size} bytes"
                )
            hexdigest = digest.hex()
            if not self.objects.contains(hexdigest):
                self.objects.add_fd(hexdigest, fd, os.fstat(fd).st_size)
        finally:
            if not isinstance(src, int):
                os.close(fd)
        return hexdigest

    def open_object(self, hexdigest: str) -> int:
        """Open an object read-only; in a secure repository its fs-verity digest is checked."""
        path = self.object_path(hexdigest)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if not self.insecure:
            try:
                alg, digest = measure_verity(fd, path=str(path))
            except OSError as e:
                os.close(fd)
                die(f"object {path} has no usable fs-verity: {e.strerror}")
            if alg is not self.algorithm or digest.hex() != hexdigest:
                os.close(fd)
                die(f"object {path} is corrupt: fs-verity digest {digest.hex()}")
        return fd

    # -- images ------------------------------------------------------------------------

    def write_image(self, data: bytes | bytearray, *, hexdigest: str | None = None) -> str:
        """Store an EROFS image and make it mountable (images/HEX); returns HEX
        (`hexdigest`: as ensure_object's)."""
        hexdigest = self.ensure_object(data, hexdigest=hexdigest)
        self.objects.flush()  # the symlink must never point at an unpublished object
        self._symlink(self.path / IMAGES_DIR / hexdigest, self.object_path(hexdigest))
        return hexdigest

    def image_path(self, hexdigest: str) -> Path:
        return self.path / IMAGES_DIR / self.objects.check_hex(hexdigest)

    def has_image(self, hexdigest: str) -> bool:
        return os.path.exists(self.image_path(hexdigest))

    def list_images(self) -> list[str]:
        d = self.path / IMAGES_DIR
        return sorted(
            e.name for e in os.scandir(d) if e.is_symlink() and _is_hex(e.name, self.algorithm)
        )

    def tag(self, name: str, image_hex: str) -> None:
        """images/refs/NAME -> the image (a GC root). NAME may contain '/'."""
        _check_name(name, "tag", nested=True)
        if not self.has_image(image_hex):
            die(f"cannot tag {name}: repository {self.path} has no image {image_hex}")
        self._symlink(self.path / IMAGES_DIR / REFS_DIR / name, self.image_path(image_hex))

    def untag(self, name: str) -> bool:
        _check_name(name, "tag", nested=True)
        link = self.path / IMAGES_DIR / REFS_DIR / name
        try:
            os.unlink(link)
        except FileNotFoundError:
            return False
        fsync_dir(link.parent)
        return True

    def tags(self) -> dict[str, str]:
        """Every tag under images/refs/ and the image it names."""
        base = self.path / IMAGES_DIR / REFS_DIR
        out: dict[str, str] = {}
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                link = Path(dirpath, f)
                if link.is_symlink():
                    out[link.relative_to(base).as_posix()] = Path(os.readlink(link)).name
        return dict(sorted(out.items()))

    # -- streams -----------------------------------------------------------------------

    def write_stream(self, name: str, data: bytes) -> str:
        """Store `data` as an object and name it streams/NAME; returns its hex digest."""
        _check_name(name, "stream")
        if name == REFS_DIR:
            raise ValueError(f"invalid stream name {name!r}")
        hexdigest = self.ensure_object(data)
        self.objects.flush()
        self._symlink(self.path / STREAMS_DIR / name, self.object_path(hexdigest))
        return hexdigest

    def stream_path(self, name: str) -> Path:
        _check_name(name, "stream")
        return self.path / STREAMS_DIR / name

    def read_stream(self, name: str) -> bytes | None:
        """The content of streams/NAME, or None if there is no such stream.

        A link whose object is gone names no stream either (`cfsboot fsck` reports it).
        """
        link = self.stream_path(name)
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        hexdigest = "".join(Path(target).parts[-2:])
        if not _is_hex(hexdigest, self.algorithm):
            log.warning("stream %s is not a link to an object (%s)", name, target)
            return None
        try:
            return self.read_object(hexdigest)
        except FileNotFoundError:
            log.warning("stream %s names a missing object (%s)", name, target)
            return None

    def read_object(self, hexdigest: str) -> bytes:
        """An object's whole content (checked by fs-verity in a secure repository)."""
        fd = self.open_object(hexdigest)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    # -- helpers -----------------------------------------------------------------------

    def link_objects(self, links: Sequence[tuple[Path, str]]) -> None:
        """Name objects already published (a batch's, after it ended): each link (a stream
        or an image path) to its object; each directory is synced once, at the end."""
        for link, hexdigest in links:
            self._symlink(link, self.object_path(hexdigest), sync=False)
        for parent in dict.fromkeys(link.parent for link, _ in links):
            fsync_dir(parent)

    def _symlink(self, link: Path, target: Path, *, sync: bool = True) -> None:
        """Atomically create or replace `link` with a relative symlink to `target`."""
        link.parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(target, link.parent)
        tmp = link.parent / temp_name(link.name)
        os.symlink(rel, tmp)
        try:
            os.rename(tmp, link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if sync:
            fsync_dir(link.parent)


def _is_hex(name: str, alg: HashAlg) -> bool:
    return len(name) == alg.hex_len and not name.strip("0123456789abcdef")


def _feature_names(features: Fields | None, key: str) -> set[str]:
    """A meta.json feature list (composefs-rs: compatible, read-only-compatible, incompatible)."""
    if features is None:
        return set()
    names = features.opt_list(key)
    if not all(isinstance(n, str) for n in names):
        raise features.error(f"{key} lists something that is not a feature name")
    return {str(n) for n in names}


def _read_meta(meta: Path) -> tuple[HashAlg, bool]:
    """(algorithm, read_only) from meta.json; errors name the file."""
    doc = Fields(parse_object(meta.read_bytes(), str(meta)), str(meta))
    version = doc.obj.get("version")
    if version != REPO_FORMAT_VERSION:
        die(
            f"{meta}: repository format version {version!r} is not supported"
            f" (this cfsboot knows version {REPO_FORMAT_VERSION})"
        )
    name = doc.obj.get("algorithm")
    alg = HashAlg.from_repo_name(name) if isinstance(name, str) else None
    if alg is None:
        die(
            f"{meta}: unknown algorithm {name!r}"
            " (expected fsverity-sha256-12 or fsverity-sha512-12)"
        )
    features = doc.opt_obj("features")
    incompat = _feature_names(features, "incompatible")
    if incompat:
        die(f"{meta}: repository uses unsupported features: {', '.join(sorted(incompat))}")
    ro = _feature_names(features, "read-only-compatible") - KNOWN_RO_COMPAT_FEATURES
    return alg, bool(ro)


def _infer_algorithm(objects: Path) -> HashAlg | None:
    """An old repository without meta.json: the object name length tells the algorithm."""
    try:
        for sub in os.scandir(objects):
            if sub.is_dir() and len(sub.name) == 2:
                for obj in os.scandir(sub.path):
                    return HashAlg.from_hex_len(2 + len(obj.name))
    except FileNotFoundError:
        pass
    return None


def _write_meta(root: Path, alg: HashAlg) -> None:
    write_file_atomic(root / REPO_META, meta_json(alg), mode=0o644)


def _write_meta_with_verity(root: Path, alg: HashAlg) -> bool:
    """Write meta.json with fs-verity enabled before it gets its name; False if unsupported."""
    secure = True

    def seal(tmp: Path) -> None:
        nonlocal secure
        ro = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            enable_verity(ro, alg, path=str(root / REPO_META))
        except VerityUnsupported:
            secure = False
        finally:
            os.close(ro)

    write_file_atomic(root / REPO_META, meta_json(alg), mode=0o644, seal=seal)
    return secure


def _take_lock(path: Path, *, wait: bool) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if not wait:
            die(
                f"repository {path} is locked by another process",
                hint="another cfsboot is writing to it; try again when it has finished",
            )
        sys.stderr.write(f"cfsboot: waiting for the lock on repository {path}\n")
        sys.stderr.flush()
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    except BaseException:
        os.close(fd)
        raise
