"""Check a composefs repository without trusting it: objects, images, links, leftovers.

The checks (composefs-rs's `fsck` covers the same ground):
- every object's content matches its name, and in a secure repository every
  object has fs-verity (cfsboot.composefs.objectcheck). Each object is read
  once: images and the streams the caller wants parsed into memory (they are
  checked there), every other one by a pool of threads, largest first;
- every image (images/HEX) parses, and every object it references exists;
- links resolve: images/HEX and streams/NAME to objects of the right name,
  tags (images/refs/**, streams/refs/**) to images and streams;
- nothing is left of interrupted writes: batch staging directories and
  temporary object files in objects/, temporary link names.

`scan_links` is the cheap part (no object is read: status and gc run it);
`check_repository` does everything. Each problem is one `Problem` line; the
caller shows them and decides what can be repaired.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cfsboot.composefs.objectstore import STAGING_PREFIX, TEMP_OBJECT_PREFIX
from cfsboot.composefs.repository import Repository
from cfsboot.linux.fsutil import TEMP_MARKER
from setuproot.contract import IMAGES_DIR, OBJECTS_DIR, REFS_DIR, STREAMS_DIR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cfsboot.composefs.objectcheck import Finding
    from cfsboot.composefs.tree import Inode  # compiled, with typing: not for status

# status and gc run quick_layout on every call: the EROFS reader and the object checks are
# imported by the full check that uses them.

_HEX = frozenset("0123456789abcdef")


class Code(enum.StrEnum):
    """What kind of problem; stable names for `fsck --json`."""

    OBJECT_CORRUPT = "object-corrupt"
    OBJECT_UNREADABLE = "object-unreadable"
    OBJECT_NO_VERITY = "object-no-verity"
    OBJECT_MISSING = "object-missing"
    IMAGE_DAMAGED = "image-damaged"
    LINK_DANGLING = "link-dangling"
    LINK_WRONG = "link-wrong"
    TAG_DANGLING = "tag-dangling"
    LEFTOVER = "leftover"
    UNEXPECTED = "unexpected-entry"
    LAYOUT = "layout"


@dataclass(frozen=True)
class Problem:
    """One problem, shown as one line: `PATH: MESSAGE`.

    `path` is relative to what was checked (the repository, the physical root,
    the ESP); `subject` names what a repair acts on (an object's hex digest, a
    deployment id, an ESP path); `repair` says what `--repair` does about it
    (None: it needs a person).
    """

    code: str
    path: str
    message: str
    subject: str = ""
    repair: str | None = None

    def line(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text} [--repair: {self.repair}]" if self.repair else text


def is_hex(name: str, length: int) -> bool:
    return len(name) == length and _HEX.issuperset(name)


def object_relpath(hexdigest: str) -> str:
    """`objects/XX/REST`, relative to the repository."""
    return f"{OBJECTS_DIR}/{hexdigest[:2]}/{hexdigest[2:]}"


def walk_dir(top: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(path relative to `top`, entry) of everything under `top`, without recursion."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(top / rel if rel else top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            yield sub, e
            if e.is_dir(follow_symlinks=False):
                stack.append(sub)


@dataclass
class Layout:
    """What the directory scan found (nothing read yet)."""

    problems: list[Problem] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)  # hex -> size (regular files)
    images: dict[str, str] = field(default_factory=dict)  # image hex -> object it links to
    streams: dict[str, str] = field(default_factory=dict)  # stream name -> object hex
    tags: dict[str, str] = field(default_factory=dict)  # images/refs NAME -> image hex
    # Links whose object is missing: image hex / stream name -> the object it names.
    dangling_images: dict[str, str] = field(default_factory=dict)
    dangling_streams: dict[str, str] = field(default_factory=dict)
    dangling_tags: dict[str, str] = field(default_factory=dict)  # tag -> the missing image

    def add(self, code: Code, path: str, message: str, subject: str = "") -> None:
        self.problems.append(Problem(code, path, message, subject))


def _leftover(layout: Layout, path: str, what: str) -> None:
    layout.add(Code.LEFTOVER, path, f"{what} left by an interrupted write", path)


def scan_objects(repo: Repository, layout: Layout) -> None:
    """objects/: every object, and whatever else is there (leftovers, strangers)."""
    root = repo.path / OBJECTS_DIR
    rest_len = repo.algorithm.hex_len - 2
    try:
        subs = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        layout.add(Code.LAYOUT, OBJECTS_DIR, "the objects directory is missing")
        return
    except NotADirectoryError:
        layout.add(Code.LAYOUT, OBJECTS_DIR, "is not a directory")
        return
    for sub in subs:
        rel = f"{OBJECTS_DIR}/{sub.name}"
        if sub.name.startswith(STAGING_PREFIX) and sub.is_dir(follow_symlinks=False):
            _leftover(layout, rel, "a staging directory")
            continue
        if not (is_hex(sub.name, 2) and sub.is_dir(follow_symlinks=False)):
            layout.add(Code.UNEXPECTED, rel, "not an object directory (XX/)")
            continue
        with os.scandir(sub.path) as it:
            for e in sorted(it, key=lambda e: e.name):
                path = f"{rel}/{e.name}"
                if e.name.startswith(TEMP_OBJECT_PREFIX):
                    _leftover(layout, path, "a temporary object file")
                elif not is_hex(e.name, rest_len):
                    layout.add(Code.UNEXPECTED, path, "not named by an object digest")
                elif not e.is_file(follow_symlinks=False):
                    layout.add(Code.UNEXPECTED, path, "an object that is not a regular file")
                else:
                    layout.objects[sub.name + e.name] = e.stat(follow_symlinks=False).st_size


def _link_target(path: Path) -> str | None:
    """The object hex a link `../objects/XX/REST` names, or None if it is no such link."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    parts = Path(target).parts
    if len(parts) < 3 or parts[-3] != OBJECTS_DIR:
        return None
    return parts[-2] + parts[-1]


def _scan_object_links(
    repo: Repository, layout: Layout, d: str, exists: Callable[[str], bool]
) -> tuple[dict[str, str], dict[str, str]]:
    """images/ or streams/: NAME -> object hex for the links that resolve, and the others."""
    out: dict[str, str] = {}
    dangling: dict[str, str] = {}
    hex_len = repo.algorithm.hex_len
    try:
        entries = sorted(os.scandir(repo.path / d), key=lambda e: e.name)
    except FileNotFoundError:
        layout.add(Code.LAYOUT, d, "the directory is missing")
        return out, dangling
    except NotADirectoryError:
        layout.add(Code.LAYOUT, d, "is not a directory")
        return out, dangling
    for e in entries:
        rel = f"{d}/{e.name}"
        if e.name == REFS_DIR and e.is_dir(follow_symlinks=False):
            continue
        if TEMP_MARKER in e.name:
            _leftover(layout, rel, "a temporary link")
            continue
        target = _link_target(Path(e.path)) if e.is_symlink() else None
        if target is None or not is_hex(target, hex_len):
            layout.add(Code.UNEXPECTED, rel, "not a link to an object (../objects/XX/REST)")
        elif d == IMAGES_DIR and target != e.name:
            layout.add(Code.LINK_WRONG, rel, f"links to another object ({target[:16]}…)")
        elif not exists(target):
            dangling[e.name] = target
            layout.add(
                Code.LINK_DANGLING,
                rel,
                f"its object {object_relpath(target)[:26]}… is missing",
                target,
            )
        else:
            out[e.name] = target
    return out, dangling


def _scan_refs(
    repo: Repository, layout: Layout, d: str, names: Collection[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """images/refs/** or streams/refs/**: NAME -> what it names, for those that resolve and not."""
    base = repo.path / d / REFS_DIR
    out: dict[str, str] = {}
    dangling: dict[str, str] = {}
    what = "image" if d == IMAGES_DIR else "stream"
    for rel, e in walk_dir(base):
        path = f"{d}/{REFS_DIR}/{rel}"
        if TEMP_MARKER in e.name:
            _leftover(layout, path, "a temporary link")
        elif e.is_dir(follow_symlinks=False):
            continue
        elif not e.is_symlink():
            layout.add(Code.UNEXPECTED, path, f"not a link to an {what}")
        else:
            link = os.readlink(e.path)
            target = Path(link).name
            if target not in names:
                dangling[rel] = target
                if what == "image" and not is_hex(target, repo.algorithm.hex_len):
                    # Not a digest at all (a link made by hand): say what it holds.
                    message = f"links to {link!r}, which names no image (not a digest)"
                else:
                    short = target if len(target) <= 32 else f"{target[:32]}…"
                    message = f"names {what} {short}, which is missing"
                layout.add(Code.TAG_DANGLING, path, message, target)
            else:
                out[rel] = target
    return out, dangling


def scan_links(repo: Repository, layout: Layout, exists: Callable[[str], bool]) -> None:
    """images/, streams/ and their refs/ (the cheap part: links are read, objects are not)."""
    layout.images, layout.dangling_images = _scan_object_links(repo, layout, IMAGES_DIR, exists)
    layout.streams, layout.dangling_streams = _scan_object_links(repo, layout, STREAMS_DIR, exists)
    # A tag of an image whose own link is dangling: that link is the problem to report.
    images = {*layout.images, *layout.dangling_images}
    layout.tags, layout.dangling_tags = _scan_refs(repo, layout, IMAGES_DIR, images)
    _scan_refs(repo, layout, STREAMS_DIR, layout.streams)


def quick_layout(repo: Repository) -> Layout:
    """Links and tags only, each object looked up by name (what status and gc run)."""
    layout = Layout()
    scan_links(repo, layout, lambda h: os.path.exists(repo.object_path(h)))
    return layout


# ---------------------------------------------------------------------------------------
# The deep check
# ---------------------------------------------------------------------------------------


@dataclass
class RepoCheck:
    """The outcome of check_repository."""

    layout: Layout
    problems: list[Problem] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)  # present objects whose content is wrong
    stream_data: dict[str, bytes] = field(default_factory=dict)  # kept streams, checked
    trees: dict[str, Inode] = field(default_factory=dict)  # images asked for, parsed
    image_refs: dict[str, set[str]] = field(default_factory=dict)  # image -> its objects
    missing: dict[str, str] = field(default_factory=dict)  # missing object -> who needs it
    bytes_read: int = 0

    def require(self, hexdigest: str, who: str) -> None:
        """Record that `who` needs an object (a missing one becomes a problem)."""
        if hexdigest not in self.layout.objects:
            self.missing.setdefault(hexdigest, who)

    def all_problems(self) -> list[Problem]:
        """Every problem found: the layout's, the contents', then missing objects."""
        return [*self.layout.problems, *self.problems, *self.missing_problems()]

    def missing_problems(self) -> list[Problem]:
        return [
            Problem(Code.OBJECT_MISSING, object_relpath(h), f"missing (needed by {who})", h)
            for h, who in sorted(self.missing.items())
        ]


def _object_problem(hexdigest: str, found: Finding) -> Problem:
    return Problem(str(found.verdict), object_relpath(hexdigest), found.detail, hexdigest)


def file_refs(tree: Inode) -> Iterator[tuple[bytes, Inode]]:
    """(path, node) of every regular file that names an external object (no recursion)."""
    stack: list[tuple[bytes, Inode]] = [(b"", tree)]
    while stack:
        path, node = stack.pop()
        for name, child in (node.children or {}).items():
            sub = path + b"/" + name
            if child.children is not None:
                stack.append((sub, child))
            elif stat.S_ISREG(child.mode) and (child.digest is not None or child.payload):
                yield sub, child


def _check_tree(check: RepoCheck, repo: Repository, image: str, tree: Inode) -> list[Problem]:
    refs: set[str] = set()
    problems: list[Problem] = []
    alg = repo.algorithm
    for path, node in file_refs(tree):
        shown = path.decode(errors="replace")
        payload = (node.payload or b"").decode(errors="replace")
        hexd = node.digest.hex() if node.digest is not None else payload.replace("/", "")
        expected = f"{hexd[:2]}/{hexd[2:]}"
        if not is_hex(hexd, alg.hex_len) or (node.payload and payload != expected):
            problems.append(
                Problem(
                    Code.IMAGE_DAMAGED,
                    f"{IMAGES_DIR}/{image}",
                    f"{shown} names no valid {alg} object (redirect {payload[:40]!r})",
                    image,
                )
            )
            continue
        refs.add(hexd)
        check.require(hexd, f"image {image[:16]}… for {shown}")
    check.image_refs[image] = refs
    return problems


def _check_image(check: RepoCheck, repo: Repository, image: str, data: bytes, keep: bool) -> None:
    from cfsboot.composefs.erofs.reader import ImageFormatError, read_image

    try:
        tree = read_image(data)
    except ImageFormatError as e:
        check.problems.append(
            Problem(Code.IMAGE_DAMAGED, f"{IMAGES_DIR}/{image}", f"does not parse: {e}", image)
        )
        return
    check.problems += _check_tree(check, repo, image, tree)
    if keep:
        check.trees[image] = tree


def _in_memory(check: RepoCheck, repo: Repository, hexdigest: str) -> bytes | None:
    """Read and check one object in memory; its content if it is right."""
    from cfsboot.composefs.objectcheck import read_verified

    path = str(repo.path / object_relpath(hexdigest))
    data, found = read_verified(path, hexdigest, repo.algorithm, secure=not repo.insecure)
    check.bytes_read += check.layout.objects.get(hexdigest, 0)
    if found is not None:
        check.problems.append(_object_problem(hexdigest, found))
        if data is None:
            check.bad.add(hexdigest)
    return data


def check_repository(
    repo: Repository,
    *,
    keep_trees: Collection[str] = (),
    keep_stream: Callable[[str], bool] = lambda name: True,
    threads: int | None = None,
) -> RepoCheck:
    """Check everything (see the module docstring); the streams `keep_stream` names are kept.

    Objects the tree of a kept stream or of an image needs are recorded with
    RepoCheck.require, so a caller that reads more references (layer records)
    adds them before asking for missing_problems().
    """
    layout = Layout()
    scan_objects(repo, layout)
    scan_links(repo, layout, layout.objects.__contains__)
    from cfsboot.composefs.objectcheck import Verdict

    check = RepoCheck(layout)
    in_memory = set(layout.images.values())
    kept = {name: h for name, h in layout.streams.items() if keep_stream(name)}
    in_memory |= set(kept.values())
    rest = [h for h in layout.objects if h not in in_memory]
    from concurrent.futures import ThreadPoolExecutor  # the deep check only (status imports us)

    workers = threads or max(1, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(workers, thread_name_prefix="fsck") as pool:
        futures = [
            pool.submit(_verify_batch, repo, batch) for batch in _batches(rest, layout.objects)
        ]
        # Meanwhile, on this thread: images and kept streams are read, checked and parsed.
        contents = {h: _in_memory(check, repo, h) for h in sorted(in_memory)}
        for image, h in sorted(layout.images.items()):
            data = contents[h]
            if data is not None:
                _check_image(check, repo, image, data, image in keep_trees)
        for name, h in kept.items():
            data = contents[h]
            if data is not None:
                check.stream_data[name] = data
        for future in futures:
            for h, found in future.result():
                check.problems.append(_object_problem(h, found))
                if found.verdict is not Verdict.NO_VERITY:
                    check.bad.add(h)
    check.bytes_read += sum(layout.objects[h] for h in rest)
    check.problems.sort(key=lambda p: p.path)
    return check


# Objects are handed to the threads in batches of about this many bytes (or files): one
# task per small object costs more than hashing it. Big objects go first, one per task,
# so that no thread is left with a big one at the end.
BATCH_BYTES = 8 << 20
BATCH_FILES = 256


def _batches(hexes: list[str], sizes: dict[str, int]) -> Iterator[list[str]]:
    batch: list[str] = []
    total = 0
    for h in sorted(hexes, key=lambda h: -sizes[h]):
        batch.append(h)
        total += sizes[h]
        if total >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _verify_batch(repo: Repository, batch: list[str]) -> list[tuple[str, Finding]]:
    """(object, what is wrong) for the objects of `batch` that are not sound."""
    from cfsboot.composefs.objectcheck import verify_file

    out = []
    alg, secure, root = repo.algorithm, not repo.insecure, repo.path
    for h in batch:
        found = verify_file(str(root / object_relpath(h)), h, alg, secure=secure)
        if found is not None:
            out.append((h, found))
    return out
