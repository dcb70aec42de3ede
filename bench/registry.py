"""Name → factory registries.

Every technique a study can compare (norms, optimizers, schedules, architectures,
augmentations, datasets) lives in a :class:`Registry`. A registry entry carries its
factory, a one-line description and the paper it implements, so ``bench zoo`` can list
them and tests can parametrize over them. Looking up a name that is not registered
raises :class:`~bench.errors.UnknownNameError` listing the valid names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bench.errors import UnknownNameError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    factory: F
    description: str
    paper: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)


class Registry(Generic[F]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[F]] = {}

    def register(
        self, name: str, description: str, paper: str = "", tags: tuple[str, ...] = ()
    ) -> Callable[[F], F]:
        def deco(factory: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, factory, description, paper, frozenset(tags))
            return factory

        return deco

    def entry(self, name: str) -> Entry[F]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self._entries) from None

    def get(self, name: str) -> F:
        return self.entry(name).factory

    def check(self, name: str) -> None:
        self.entry(name)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[F]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
