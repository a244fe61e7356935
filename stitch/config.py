"""Typed configs: frozen dataclasses with `to_dict` / `from_dict` that refuse unknown keys.

>>> @dataclass(frozen=True)
... class MyConfig(Config):
...     layers: int = 4
>>> MyConfig.from_dict({"layers": 2}).to_dict()
{'layers': 2}
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Config:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(
                f"config: unknown keys {unknown} for {cls.__name__}; valid keys: {sorted(fields)}"
            )
        return cls(**data)


def option(default: Any = dataclasses.MISSING, *, help: str, choices=None):
    """A config field with its command-line help and, optionally, its valid values (no default: required)."""
    metadata = {"help": help, "choices": None if choices is None else tuple(choices)}
    return dataclasses.field(default=default, metadata=metadata)
