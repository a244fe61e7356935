"""AdapterGroup: one adapter per layer pair of a multi-layer run, saved, loaded and checkpointed as one.

    >>> group = AdapterGroup.of([build_adapter("affine", d_source=32, d_target=32) for _ in range(3)])
    >>> group.members[1](x)                   # pair 1's map
    >>> save_adapter(group, "runs/multi/checkpoint"); load_adapter("runs/multi/checkpoint").members[2]

Used as a map itself, a group applies its first member (so it is a complete `Adapter`); the training loop
calls each pair's member. `build_adapter("group", d_source=..., d_target=...)` is a one-member affine group.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from stitch.adapters.base import Adapter, build_adapter, register_adapter


@register_adapter
class AdapterGroup(Adapter):
    kind = "group"

    def __init__(self, d_source: int | None = None, d_target: int | None = None, members: list | None = None):
        super().__init__(d_source, d_target)
        specs = members or [{"kind": "affine", "config": {"d_source": d_source, "d_target": d_target}}]
        self.members = nn.ModuleList(build_adapter(s["kind"], **s["config"]) for s in specs)

    @classmethod
    def of(cls, adapters) -> AdapterGroup:
        adapters = list(adapters)
        specs = [{"kind": a.kind, "config": a.config()} for a in adapters]
        group = cls(adapters[0].d_source, adapters[0].d_target, specs)
        group.members = nn.ModuleList(adapters)  # the very modules: an optimizer holding them keeps working
        return group

    def config(self) -> dict[str, Any]:
        specs = [{"kind": m.kind, "config": m.config()} for m in self.members]
        return {"d_source": self.d_source, "d_target": self.d_target, "members": specs}

    def forward(self, x):
        return self.members[0](x)
