"""/etc merge: the three-way merge invariants, on random small trees (hypothesis)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.deploy.etcmerge import (
    EtcMergeConflict,
    find_conflicts,
    merge,
)
from cfstest.fssnapshot import snapshot

# --- the three-way merge invariants, on random small trees ----------------------------------

TOPS = ("a", "b", "c")
CHILDREN = ("x", "y")
PATHS = [*TOPS, *(f"{t}/{c}" for t in TOPS for c in CHILDREN)]

Node = tuple[Any, ...] | None
files = st.tuples(
    st.just("f"),
    st.sampled_from([b"1", b"2"]),
    st.sampled_from([0o644, 0o600]),
    st.sampled_from([None, b"v"]),
)
links = st.tuples(st.just("l"), st.sampled_from(["t1", "t2"]))
dirs = st.tuples(st.just("d"), st.sampled_from([0o755, 0o700]))
nodes = st.one_of(st.none(), files, links, dirs)
KINDS = {"f": files, "l": links, "d": dirs}
# Mostly edits that keep the type, so that most examples merge instead of conflicting.
EDITS = st.sampled_from(["keep", "keep", "vary", "vary", "delete", "replace"])


def _normal(tree: dict[str, Node]) -> dict[str, Node]:
    """Drop children of anything that is not a directory."""
    return {
        p: n
        for p, n in tree.items()
        if n is not None and ("/" not in p or (tree[p.split("/")[0]] or ("",))[0] == "d")
    }


def _build(root: Path, tree: dict[str, Node]) -> None:
    root.mkdir()
    for rel in sorted(tree):
        node, path = tree[rel], root / rel
        assert node is not None
        if node[0] == "f":
            path.write_bytes(node[1])
            os.chmod(path, node[2])
            if node[3] is not None:
                os.setxattr(path, "user.k", node[3])
        elif node[0] == "l":
            path.symlink_to(node[1])
        else:
            path.mkdir()
            os.chmod(path, node[1])


def _is_dir(row: tuple[Any, ...]) -> bool:
    return str(row[0]).startswith("d")


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_three_way_merge_invariants(data: st.DataObject) -> None:
    pristine_tree = {
        p: data.draw(st.one_of(dirs, nodes) if "/" not in p else nodes, label=f"pristine {p}")
        for p in PATHS
    }

    def edit(label: str, node: Node) -> Node:
        what = data.draw(EDITS, label=label)
        if what == "keep":
            return node
        if what == "delete":
            return None
        like = files if node is None or what == "replace" else KINDS[node[0]]
        return data.draw(nodes if what == "replace" else like, label=label)

    def derive(side: str) -> dict[str, Node]:
        return {p: edit(f"{side} {p}", n) for p, n in pristine_tree.items()}

    made = [_normal(t) for t in (pristine_tree, derive("current"), derive("new"))]
    with tempfile.TemporaryDirectory() as tmp:
        pristine, current, new = (Path(tmp) / n for n in ("pristine", "current", "new"))
        for root, tree in zip((pristine, current, new), made, strict=True):
            _build(root, tree)
        sp, sc, sn = snapshot(pristine), snapshot(current), snapshot(new)
        changed = {p for p in sc if sc[p] != sp.get(p)}
        removed = {p for p in sp if p not in sc}

        def above(p: str) -> list[str]:
            return [p.split("/")[0]] if "/" in p else []

        clash = any(
            (p in sn and _is_dir(sc[p]) != _is_dir(sn[p]))
            or any(a in sn and not _is_dir(sn[a]) for a in above(p))
            for p in changed
        )
        assert bool(find_conflicts(pristine, current, new)) == clash
        if clash:
            with pytest.raises(EtcMergeConflict):
                merge(pristine, current, new)
            assert snapshot(new) == sn
            return

        report = merge(pristine, current, new)
        sm = snapshot(new)
        assert set(report.added) | set(report.modified) == changed
        assert set(report.removed) == removed
        for p in set(sp) | set(sc) | set(sn):
            if p in changed:
                assert sm[p] == sc[p], p
            elif p in removed or any(a in removed for a in above(p)):
                assert p not in sm, p
            elif p not in sn and any(c.startswith(p + "/") for c in changed):
                assert sm[p] == sc[p], p  # created to hold a local change
            else:
                assert sm.get(p) == sn.get(p), p
        assert merge(pristine, current, new) == report
        assert snapshot(new) == sm
