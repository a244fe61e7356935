"""One registry of named strategies of one kind: a read-only mapping filled by a decorator that refuses clashes.

    >>> COMBINES = Registry("combine")
    >>> @COMBINES.register
    ... class Sum:
    ...     name = "sum"
    >>> COMBINES.lookup("sum") is Sum, "sum" in COMBINES, COMBINES.names()
    (True, True, ('sum',))
    >>> COMBINES.lookup("max")
    ValueError: combine: 'max' is not one of ['sum']

Every registry of stitch (injections, combines, position selections, generation policies, adapter kinds,
training objectives; in `analyses`, similarity measures, controls and report section kinds) is one of these.
Iteration follows registration order, the order the command line and the error messages list. Entries are
added only through `register` (no item assignment), so a clash cannot pass silently. The module imports
nothing heavy, so torch-free code may hold a registry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

from stitch.checks import check_choice

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Items of one `kind` by name; `register` reads an item's name from its `key` attribute ("name")."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *, key: str = "name"):
        self.kind, self.key = kind, key
        self._items: dict[str, T] = {}
        for name, item in (entries or {}).items():
            self.register(item, name=name)

    def register(self, item: T, *aliases: str, name: str | None = None) -> T:
        """Add `item` under its name (or `name`) and `aliases`; returns it, so it decorates a class.

        Registering the same item again is a no-op; a name already held by another item is refused (a
        silent replacement would change what every config naming it runs).
        """
        names = (getattr(item, self.key) if name is None else name, *aliases)
        for each in names:
            held = self._items.get(each, item)
            if held is not item:
                raise ValueError(
                    f"{self.kind}: {each!r} is already registered to {_label(held)}; "
                    f"valid: a name not in {list(self._items)}"
                )
        for each in names:
            self._items[each] = item
        return item

    def lookup(self, name: str, arg: str | None = None) -> T:
        """The item called `name`; an unknown name raises "ARG: 'x' is not one of [...]" (ARG: the kind)."""
        check_choice(arg or self.kind, name, tuple(self._items))
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:  # an unhashable value (a list from YAML) is simply not a name
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


def _label(item: object) -> str:
    return getattr(item, "__name__", None) or type(item).__name__


__all__ = ["Registry"]
