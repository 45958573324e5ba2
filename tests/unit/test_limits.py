"""composefs's limits are declared once (cfsboot.composefs.limits), and the dumpfile reader
and the EROFS writer hold to the same ones: what one accepts at a limit the other builds,
one past it both refuse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cfsboot.composefs import limits
from cfsboot.composefs.dumpfile import DumpfileError, parse
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.tree import INLINE_MAX, Inode
from cfstest import REPO_ROOT

# The source tree's (the module itself may be the compiled one, or loaded from elsewhere).
COMPOSEFS = REPO_ROOT / "stager/cfsboot/composefs"
LIMIT_NAMES = {n for n in vars(limits) if n.isupper()}
# Names the limits had before they were declared once; none may come back.
OLD_NAMES = {"MAX_CHUNKS", "XATTR_BUDGET", "XATTR_SPACE_MAX", "MAX_EXTERNAL_SIZE", "SYMLINK_MAX"}
LIMIT_VALUES = {5000, 0xFFFF // 2, 1 << 43, 1 << 53}


def _literal(node: ast.expr) -> int | None:
    try:
        value = eval(compile(ast.Expression(node), "<limit>", "eval"), {"__builtins__": {}})
    except Exception:
        return None  # not a constant expression (names, calls)
    return value if isinstance(value, int) else None


def _module_constants(path: Path) -> list[tuple[str, int | None]]:
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            out.append((node.target.id, _literal(node.value)))
        elif isinstance(node, ast.Assign):
            out += [(t.id, _literal(node.value)) for t in node.targets if isinstance(t, ast.Name)]
    return out


def test_limits_are_declared_once() -> None:
    sources = sorted(p for p in COMPOSEFS.rglob("*.py") if p.name != "limits.py")
    assert len(sources) > 10
    again = [
        (p.relative_to(COMPOSEFS).as_posix(), name)
        for p in sources
        for name, value in _module_constants(p)
        if name.lstrip("_") in LIMIT_NAMES | OLD_NAMES or value in LIMIT_VALUES
    ]
    assert again == []


def test_the_values() -> None:
    assert (limits.NAME_MAX, limits.XATTR_NAME_MAX, limits.PATH_MAX) == (255, 255, 4096)
    assert (limits.INLINE_CONTENT_MAX, limits.RECOMMENDED_INLINE_CONTENT_MAX) == (5000, 64)
    assert (limits.XATTR_VALUE_MAX, limits.EXTERNAL_XATTR_MAX) == (65535, 32767)
    assert limits.EXTERNAL_SIZE_MAX == 1024 << 43 == 1 << 53
    assert INLINE_MAX == 64


def _dump(*lines: str) -> bytes:
    return ("/ 0 40755 2 0 0 0 0.0 - - -\n" + "".join(f"{line}\n" for line in lines)).encode()


def _root(name: bytes, child: Inode) -> Inode:
    return Inode(0o40755, nlink=2, children={name: child})


@pytest.mark.parametrize("size", [limits.INLINE_CONTENT_MAX, limits.INLINE_CONTENT_MAX + 1])
def test_inline_content_limit(size: int) -> None:
    text = _dump(f"/f {size} 100644 1 0 0 0 0.0 - {'a' * size} -")
    direct = _root(b"f", Inode(0o100644, size=size, content=b"a" * size))
    if size <= limits.INLINE_CONTENT_MAX:
        assert build_image(parse(text)) == build_image(direct)
        return
    with pytest.raises(DumpfileError, match=f"inline content size {size} exceeds 5000"):
        parse(text)
    with pytest.raises(ValueError, match=f"inline content of {size} bytes exceeds 5000"):
        build_image(direct)


@pytest.mark.parametrize("length", [limits.NAME_MAX, limits.NAME_MAX + 1])
def test_name_limit(length: int) -> None:
    name = "n" * length
    text = _dump(f"/{name} 0 100644 1 0 0 0 0.0 - - -")
    direct = _root(name.encode(), Inode(0o100644))
    if length <= limits.NAME_MAX:
        assert build_image(parse(text)) == build_image(direct)
        return
    with pytest.raises(DumpfileError, match="has a name longer than 255 bytes"):
        parse(text)
    with pytest.raises(ValueError, match="invalid file name"):
        build_image(direct)
