"""setuptools hook: compile the hot modules of the EROFS build with mypyc, and the C ones.

Which modules, and why: stager/cfsboot/composefs/native.py. Every one of them also
runs as pure Python; CFSBOOT_PURE_PYTHON=1 builds (and runs) without compiling.
"""

from __future__ import annotations

import importlib.util
import os

from setuptools import Extension, setup


def _native_modules() -> tuple[tuple[str, ...], str, str, tuple[str, ...]]:
    path = os.path.join("stager", "cfsboot", "composefs", "native.py")
    spec = importlib.util.spec_from_file_location("_cfsboot_native", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODULES, module.GROUP, module.PURE_ENV, module.C_MODULES


def ext_modules() -> list[object]:
    modules, group, pure_env, c_modules = _native_modules()
    if os.environ.get(pure_env) == "1":
        return []
    from mypyc.build import mypycify

    paths = [os.path.join("stager", *m.split(".")) + ".py" for m in modules]
    c = [
        Extension(
            m,
            sources=[os.path.join("stager", *m.split(".")) + ".c"],
            libraries=["crypto"],  # OpenSSL 3 (libssl-dev)
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
        for m in c_modules
    ]
    return [*mypycify(paths, group_name=group, opt_level="3"), *c]


setup(ext_modules=ext_modules())
