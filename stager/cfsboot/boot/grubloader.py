"""The GRUB boot menu on the ESP (Debian's GRUB, which cannot read BLS): a generated menu file.

`EFI/BOOT/grub.cfg` (Debian's monolithic grubx64.efi sources it from the
directory it was started from) and `EFI/BOOT/grub.cfg.staged`, exchanged in
one step. Boot counting keeps its state in `EFI/BOOT/grubenv` beside them
(cfsboot.boot.counting): the menu names each trial's variable, so the
environment block is never part of the exchange. `stage()` writes the block
with the new trial's variable at 0 (so that GRUB's first count rewrites it in
place) and without the variables no live or staged menu names any more.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace

from cfsboot.boot import grub
from cfsboot.boot.bootloader import (
    GRUB_MENU,
    STAGED_SUFFIX,
    Bootloader,
    BootloaderKind,
    MenuEntry,
    MenuError,
    _check_menu,
)
from cfsboot.boot.boottype import BootType
from cfsboot.boot.counting import GOOD, GrubEnv, GrubEnvError, Tries, grub_tries
from cfsboot.boot.esp import Esp

GRUB_ENV = f"{GRUB_MENU.rsplit('/', 1)[0]}/{grub.ENV_FILE_NAME}"


class Grub(Bootloader):
    kind = BootloaderKind.GRUB

    def __init__(self, esp: Esp, *, menu_path: str = GRUB_MENU, timeout: int | None = None) -> None:
        super().__init__(esp)
        self.menu_path = menu_path
        self.timeout = timeout
        self.env_path = f"{menu_path.rsplit('/', 1)[0]}/{grub.ENV_FILE_NAME}"

    def _read(self, path: str) -> grub.GrubMenu | None:
        if not self.esp.exists(path):
            return None
        try:
            return grub.GrubMenu.parse(self.esp.read_text(path))
        except grub.GrubError as e:
            raise MenuError(f"{path} on the ESP: {e}") from None
        except UnicodeDecodeError:
            raise MenuError(f"{path} on the ESP is not UTF-8 text (not cfsboot's menu)") from None

    def read_env(self) -> GrubEnv | None:
        """The environment block; None when there is none or it cannot be read (GRUB then
        counts nothing)."""
        if not self.esp.exists(self.env_path):
            return None
        try:
            return GrubEnv.parse(self.esp.read(self.env_path))
        except GrubEnvError:
            return None

    def counter_keys(self) -> list[str]:
        """The grubenv variables (keys) the live and staged menus count tries in, blessed
        entries' included (their `good` is in the block too)."""
        keys: list[str] = []
        for path in (self.menu_path, self.menu_path + STAGED_SUFFIX):
            parsed = self._read(path)
            keys += [e.counter[0] for e in parsed.entries if e.counter] if parsed else []
        return list(dict.fromkeys(keys))

    def reset_env(self) -> str:
        """Write an empty environment block (what `grub-editenv FILE create` writes)."""
        self.esp.write(self.env_path, GrubEnv().render())
        return self.env_path

    def _read_menu(self, staged: bool) -> list[MenuEntry]:
        path = self.menu_path + (STAGED_SUFFIX if staged else "")
        parsed = self._read(path)
        if parsed is None:
            return []
        env = self.read_env()
        entries = [_from_grub(e, env) for e in parsed.entries]
        # What GRUB boots first: the first entry not out of tries (the preamble's choice).
        return [m for m in entries if not m.failed] + [m for m in entries if m.failed]

    def _read_written_order(self) -> list[str]:
        parsed = self._read(self.menu_path)
        return [e.deployment for e in parsed.entries] if parsed is not None else []

    def has_staged(self) -> bool:
        return self.esp.exists(self.menu_path + STAGED_SUFFIX)

    def stage(self, entries: Sequence[MenuEntry]) -> None:
        _check_menu(entries)
        current = self._read(self.menu_path)
        timeout = self.timeout
        if timeout is None:
            timeout = current.timeout if current is not None else grub.DEFAULT_TIMEOUT
        fresh: list[str] = []
        out: list[grub.GrubEntry] = []
        for m in entries:
            ge = _to_grub(m)
            if m.tries is not None and m.tries.key is None:
                key = f"{m.deployment[:10]}{secrets.token_hex(3)}"
                ge = replace(ge, counter=(key, m.tries.left))
                fresh.append(key)
            out.append(ge)
        menu = grub.GrubMenu(tuple(out), timeout)
        text = menu.render()
        parent = self.menu_path.rsplit("/", 1)[0]
        self.esp.mkdir(parent)
        self._write_env(menu, current, fresh)
        self.esp.write_text(self.menu_path + STAGED_SUFFIX, text)

    def _write_env(
        self, staged: grub.GrubMenu, live: grub.GrubMenu | None, fresh: Sequence[str]
    ) -> None:
        """The new trials at 0, the variables of both menus kept, every other one dropped."""
        env = self.read_env()
        keys = [e.counter[0] for m in (staged, live) if m for e in m.entries if e.counter]
        if env is None and not keys:
            return
        old = dict(env.counters) if env is not None else {}
        counters = {
            k: "0" if k in fresh else old[k] for k in dict.fromkeys(keys) if k in old or k in fresh
        }
        new = (env or GrubEnv()).with_counters(counters)
        if env is None or new != env:
            try:
                self.esp.write(self.env_path, new.render())
            except GrubEnvError as e:
                raise MenuError(f"{self.env_path} on the ESP: {e}") from None

    def bless(self, deployment: str, *, counter_path: str | None = None) -> str | None:
        parsed = self._read(self.menu_path)
        entries = parsed.entries if parsed is not None else ()
        entry = next((e for e in entries if e.deployment == deployment), None)
        if entry is None or entry.counter is None:
            return None
        env = self.read_env()
        key = entry.counter[0]
        if env is None or env.get(key) == GOOD:
            return None
        counters = dict(env.counters)
        counters[key] = GOOD
        self.esp.write(self.env_path, env.with_counters(counters).render())
        return f"{self.env_path}: {key} = {GOOD}"

    def commit(self) -> None:
        staged = self.menu_path + STAGED_SUFFIX
        if not self.has_staged():
            raise MenuError(f"no staged GRUB menu ({staged}) to make the default")
        if not self.esp.exists(self.menu_path):
            self.esp.rename(staged, self.menu_path)
            return
        self._read(self.menu_path)  # refuse to replace a menu that is not ours
        self.esp.exchange(self.menu_path, staged)
        self.esp.remove(staged)

    def discard_staged(self) -> None:
        if self.has_staged():
            self.esp.remove(self.menu_path + STAGED_SUFFIX)


def _to_grub(m: MenuEntry) -> grub.GrubEntry:
    title = f"{m.title} {m.version}".strip() if m.version not in m.title else m.title
    counter = None
    if m.tries is not None and m.tries.key is not None:
        counter = (m.tries.key, m.tries.limit)
    if m.boot_type is BootType.UKI:
        return grub.GrubEntry(
            title=title, deployment=m.deployment, chainload=m.uki, counter=counter
        )
    return grub.GrubEntry(
        title=title,
        deployment=m.deployment,
        linux=m.linux,
        initrd=m.initrd,
        options=m.options,
        counter=counter,
    )


def _from_grub(e: grub.GrubEntry, env: GrubEnv | None) -> MenuEntry:
    tries: Tries | None = None
    if e.counter is not None and env is not None:
        key, limit = e.counter
        tries = grub_tries(env.get(key), limit, key)
    elif e.counter is not None:
        tries = Tries(e.counter[1], 0, e.counter[0])  # no block: GRUB counts nothing
    if e.chainload is not None:
        return MenuEntry(e.deployment, BootType.UKI, e.title, "", "", uki=e.chainload, tries=tries)
    return MenuEntry(
        e.deployment,
        BootType.BLS,
        e.title,
        "",
        "",
        linux=e.linux,
        initrd=e.initrd,
        options=e.options,
        tries=tries,
    )
