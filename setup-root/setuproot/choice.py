"""`StrEnum` and `IntEnum` without the import cost of `enum`.

setup-root runs on every boot, and `import enum` (with functools, collections,
operator, reprlib and types behind it) was a fifth of its start-up. These give
what setup-root's and the stager's fixed sets of choices use: members as class
attributes that are str (or int) instances, one object per value (`is` works),
lookup by value (`HashAlg("sha256")`), iteration in definition order, `.name`
and `.value`, str()/format() of the value, copy and pickle. Type checkers see
the real `enum` classes (the same trick as `record`).

Members are the class attributes whose names are upper case and whose values
are of the class's type; methods, properties and classmethods stay methods.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing costs start-up time too. mypy treats
# any name TYPE_CHECKING as true.
TYPE_CHECKING = False

__all__ = ["IntEnum", "StrEnum"]

if TYPE_CHECKING:
    from enum import IntEnum, StrEnum
else:

    class _Choices(type):
        def __new__(mcs, name, bases, namespace):
            value_type = str if any(issubclass(b, str) for b in bases) else int
            members = {
                key: value
                for key, value in namespace.items()
                if key.isupper() and not key.startswith("_") and type(value) is value_type
            }
            for key in members:
                del namespace[key]
            cls = super().__new__(mcs, name, bases, namespace)
            by_value = {}
            for key, value in members.items():
                member = value_type.__new__(cls, value)
                member._name_ = key
                member._value_ = value
                by_value.setdefault(value, member)
                type.__setattr__(cls, key, by_value[value])
            cls._by_value_ = by_value
            return cls

        def __call__(cls, value):
            member = cls._by_value_.get(value)
            if member is None:
                raise ValueError(f"{value!r} is not a valid {cls.__qualname__}")
            return member

        def __iter__(cls):
            return iter(cls._by_value_.values())

        def __len__(cls):
            return len(cls._by_value_)

        def __contains__(cls, value):
            return value in cls._by_value_

        def __setattr__(cls, key, value):
            if key in getattr(cls, "_by_value_", {}) or key.isupper():
                raise AttributeError(f"cannot reassign member {key!r} of {cls.__qualname__}")
            super().__setattr__(key, value)

    class _Member:
        name = property(lambda self: self._name_)
        value = property(lambda self: self._value_)

        def __reduce_ex__(self, protocol):
            return type(self), (self._value_,)

        def __copy__(self):
            return self

        def __deepcopy__(self, memo):
            return self

        def __repr__(self):
            return f"<{type(self).__qualname__}.{self._name_}: {self._value_!r}>"

    class StrEnum(_Member, str, metaclass=_Choices):
        __str__ = str.__str__
        __format__ = str.__format__

    class IntEnum(_Member, int, metaclass=_Choices):
        __str__ = int.__repr__
        __format__ = int.__format__
