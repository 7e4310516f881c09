"""A small name → entry registry shared by methods and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownEntryError(KeyError):
    """Raised when a name is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownEntryError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())


def signature_params(fn: Callable, positional: int) -> dict[str, object]:
    """Keyword parameters of `fn` after its first `positional` arguments, with defaults.

    Used to check that a registration's declared parameter schema and the function agree.
    """
    import inspect

    params = list(inspect.signature(fn).parameters.values())[positional:]
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def import_registered(family: str, fn: str | None = None) -> None:
    """Import the module(s) of `family` that register `fn` (all of them when fn is None)."""
    import importlib

    from attrflow.catalog import catalog

    entries = catalog(family)
    if fn is not None and fn not in entries:
        known = ", ".join(sorted(entries)) or "(none)"
        raise UnknownEntryError(f"unknown {family[:-1]} function {fn!r}; registered: {known}")
    chosen = [entries[fn]] if fn is not None else list(entries.values())
    for entry in chosen:
        importlib.import_module(f"attrflow.{family}.{entry.module.stem}")
