"""An ESP as a reader that writes nothing sees it: each path looked up, each directory
listed and each small file read once.

`cfsboot status` asks the ESP for the same boot entries several times (its quick
check, the live menu, the default deployment, the boot order cfsboot wrote, the
assessment of each entry): through this view the ESP is read once per run. Files
up to KEEP_READ_MAX (entries, menus, loader.conf) are kept; kernels and UKIs are read
through each time. Writing through the view is a bug, and raises.
"""

from __future__ import annotations

from cfsboot.boot.esp import KEEP_READ_MAX, Esp, EspEntry, EspError, split_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from pathlib import Path


class ReadOnceEsp(Esp):
    """A read-only view of `esp` that reads each path from it once."""

    unchanging = True

    def __init__(self, esp: Esp) -> None:
        self.esp = esp
        self._stats: dict[tuple[str, ...], EspEntry | None] = {}
        self._lists: dict[tuple[str, ...], list[EspEntry]] = {}
        self._files: dict[tuple[str, ...], bytes] = {}

    def stat(self, path: str) -> EspEntry | None:
        key = split_path(path)
        if key not in self._stats:
            self._stats[key] = self.esp.stat(path)
        return self._stats[key]

    def listdir(self, path: str = "") -> list[EspEntry]:
        key = split_path(path)
        if key not in self._lists:
            self._lists[key] = self.esp.listdir(path)
        return list(self._lists[key])

    def read(self, path: str) -> bytes:
        key = split_path(path)
        data = self._files.get(key)
        if data is None:
            data = self.esp.read(path)
            if len(data) <= KEEP_READ_MAX:
                self._files[key] = data
        return data

    def _refuse(self, path: str) -> None:
        raise EspError(f"cannot change {path} on the ESP: it is open read-only")

    def write(self, path: str, data: bytes) -> None:
        self._refuse(path)

    def install(self, path: str, src: Path) -> None:
        self._refuse(path)

    def remove(self, path: str) -> None:
        self._refuse(path)

    def remove_tree(self, path: str) -> None:
        self._refuse(path)

    def _mkdir_one(self, path: str) -> None:
        self._refuse(path)

    def rename(self, src: str, dst: str) -> None:
        self._refuse(src)

    def exchange(self, a: str, b: str) -> None:
        self._refuse(a)
