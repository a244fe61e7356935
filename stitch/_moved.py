"""Old module paths of stitch, kept importable: each is the module it moved to, with a DeprecationWarning.

    >>> import stitch.fit_models            # DeprecationWarning: moved to stitch.adapters.fit
    >>> stitch.fit_models.fit_adapter is stitch.adapters.fit.fit_adapter
    True

One finder serves every moved path (appended to `sys.meta_path`, so a real module of that name always
wins); the alias module forwards every attribute to the new module, so old imports give the same objects.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "stitch.arch": "stitch.models.arch",
    "stitch.hooks": "stitch.models.hooks",
    "stitch.model": "stitch.models.hooked",
    "stitch.cache": "stitch.models.cache",
    "stitch.loading": "stitch.models.loading",
    "stitch.interop": "stitch.models.interop",
    "stitch.atomic": "stitch.files",
    "stitch.fit_models": "stitch.adapters.fit",
    "stitch.generation": "stitch.splice.generate",
    "stitch.train": "stitch.training.loop",
    "stitch.train_config": "stitch.training.config",
    "stitch.train_eval": "stitch.training.evaluate",
    "stitch.checkpoint": "stitch.training.checkpoint",
    "stitch.distributed": "stitch.training.distributed",
    "stitch.toy": "stitch.testing",
    "stitch.demo": "stitch.cli.demo",
    "stitch.commands": "stitch.cli",
    "stitch.commands.common": "stitch.cli.common",
    "stitch.commands.align": "stitch.cli.align",
    "stitch.commands.cka": "stitch.cli.cka",
    "stitch.commands.fit": "stitch.cli.fit",
    "stitch.commands.generate": "stitch.cli.generate",
    "stitch.commands.sweep": "stitch.cli.sweep",
    "stitch.commands.train": "stitch.cli.train",
}


class _Alias(types.ModuleType):
    """A module standing for another: every attribute is read from (and written to) the new module."""

    def __init__(self, name: str, target: types.ModuleType, is_package: bool):
        super().__init__(name, target.__doc__)
        object.__setattr__(self, "_target", target)
        if is_package:  # its own, empty: the new package's path would load its modules a second time
            object.__setattr__(self, "__path__", [])

    def __getattr__(self, attr: str):
        return getattr(object.__getattribute__(self, "_target"), attr)

    def __setattr__(self, attr: str, value) -> None:
        if attr.startswith("__") and attr.endswith("__"):  # the import system's own bookkeeping
            object.__setattr__(self, attr, value)
        else:
            setattr(object.__getattribute__(self, "_target"), attr, value)

    def __dir__(self):
        return dir(object.__getattribute__(self, "_target"))


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED:
            return None
        is_package = any(other.startswith(fullname + ".") for other in MOVED)
        return importlib.util.spec_from_loader(fullname, self, is_package=is_package)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} has moved to {new}; import it from there (the old path will be removed)",
            DeprecationWarning,
            stacklevel=_caller_level(),
        )
        return _Alias(spec.name, importlib.import_module(new), spec.submodule_search_locations is not None)

    def exec_module(self, module) -> None:
        return None


def _caller_level() -> int:
    """Stack depth of the first frame outside importlib, so the warning points at the old import."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen") or frame.f_globals.get("__name__") == __name__):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
