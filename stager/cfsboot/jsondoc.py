"""Reading JSON documents where they come in: typed fields and one-line errors.

Every JSON document cfsboot reads (an OCI index, manifest or config, the image
info in the repository, the staged-deployment marker) is parsed once, at the
boundary, into a frozen dataclass; code past that point never sees `Any`. A
document that is not what it claims to be raises `DocumentError`, one line
that names the document and the field. Callers that must survive a damaged
document (status, gc) catch it and warn.
"""

from __future__ import annotations

import json

from cfsboot.errors import CfsbootError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import Any


class DocumentError(CfsbootError):
    """A JSON document that is malformed or of the wrong shape."""


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    """`data` as a JSON object (a dict), or a DocumentError naming `what`."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise DocumentError(f"{what} is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a number of 4300+ digits
        raise DocumentError(f"{what} is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise DocumentError(f"{what} is not a JSON object")
    return obj


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """Typed access to the fields of one JSON object; errors say `WHAT: KEY ...`.

    A missing key and a JSON null are the same to the `opt_` readers.
    """

    def __init__(self, obj: object, what: str) -> None:
        if not isinstance(obj, dict):
            raise DocumentError(f"{what} is not a JSON object")
        self.obj: dict[str, Any] = obj
        self.what = what

    def error(self, message: str) -> DocumentError:
        return DocumentError(f"{self.what}: {message}")

    def _get(self, key: str) -> object:
        if self.obj.get(key) is None:
            raise self.error(f"{key} is missing")
        return self.obj[key]

    def _wrong(self, key: str, kind: str) -> DocumentError:
        return self.error(f"{key} is not {kind} ({_show(self.obj[key])})")

    def req_str(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def opt_str(self, key: str) -> str | None:
        return None if self.obj.get(key) is None else self.req_str(key)

    def req_int(self, key: str) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(key, "an integer")
        return value

    def opt_int(self, key: str) -> int | None:
        return None if self.obj.get(key) is None else self.req_int(key)

    def bool_or(self, key: str, default: bool) -> bool:
        value = self.obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false")
        return value

    def req_list(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._wrong(key, "a list")
        return value

    def opt_list(self, key: str) -> list[object]:
        """The list at `key`; [] when it is missing or null."""
        return [] if self.obj.get(key) is None else self.req_list(key)

    def req_obj(self, key: str) -> Fields:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._wrong(key, "an object")
        return Fields(value, f"{self.what}: {key}")

    def opt_obj(self, key: str) -> Fields | None:
        return None if self.obj.get(key) is None else self.req_obj(key)

    def str_map(self, key: str) -> dict[str, str]:
        """An object of strings (labels, annotations); {} when missing or null."""
        sub = self.opt_obj(key)
        if sub is None:
            return {}
        for k, v in sub.obj.items():
            if not isinstance(v, str):
                raise sub.error(f"{k} is not a string ({_show(v)})")
        return dict(sub.obj)
