"""`@record`: a frozen dataclass without the import cost of `dataclasses`.

setup-root runs on every boot, and `import dataclasses` (which imports
inspect, ast, dis and tokenize) plus generating code for each class was a
third of its start-up time. `@record` gives what setup-root's value classes
use: __init__ from the annotations (positional or keyword, class-level
defaults), immutability, ==, hash, repr and match patterns. Type checkers
see a plain dataclass (so they do not flag assignments; the runtime refuses).
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing costs start-up time too. mypy treats
# any name TYPE_CHECKING as true.
TYPE_CHECKING = False

__all__ = ["record"]

if TYPE_CHECKING:
    from dataclasses import dataclass as record
else:

    def record(cls):
        """Make `cls` a frozen value class over its annotated fields."""
        names = tuple(cls.__dict__.get("__annotations__", {}))
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        qualname = cls.__qualname__

        def __init__(self, *args, **kwargs):
            if len(args) > len(names):
                raise TypeError(f"{qualname}() takes {len(names)} arguments, got {len(args)}")
            values = dict(zip(names, args, strict=False))
            for key, value in kwargs.items():
                if key not in names or key in values:
                    raise TypeError(f"{qualname}() got an unexpected or repeated argument {key!r}")
                values[key] = value
            for name in names:
                if name in values:
                    value = values[name]
                elif name in defaults:
                    value = defaults[name]
                else:
                    raise TypeError(f"{qualname}() missing argument {name!r}")
                object.__setattr__(self, name, value)

        def __setattr__(self, name, value):
            raise AttributeError(f"cannot assign to field {name!r} of frozen {qualname}")

        def __delattr__(self, name):
            raise AttributeError(f"cannot delete field {name!r} of frozen {qualname}")

        def _values(self):
            return tuple(getattr(self, n) for n in names)

        def __eq__(self, other):
            if other.__class__ is not self.__class__:
                return NotImplemented
            return _values(self) == _values(other)

        def __hash__(self):
            return hash(_values(self))

        def __repr__(self):
            fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
            return f"{qualname}({fields})"

        cls.__init__ = __init__
        cls.__setattr__ = __setattr__
        cls.__delattr__ = __delattr__
        cls.__eq__ = __eq__
        cls.__hash__ = __hash__
        cls.__repr__ = __repr__
        cls.__match_args__ = names
        return cls
