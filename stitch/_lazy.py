"""PEP 562 lazy exports: a package names its public objects without importing the modules that hold them.

    >>> __getattr__, __dir__ = lazy_exports(__name__, {"load_model": "stitch.models.loading"})

`import stitch` (and so `stitch --help`) then imports no torch: `stitch.load_model` imports
`stitch.models.loading` on first use and caches the object in the package's namespace. A value of the
form "pkg.module:attr" exports `attr` of that module under the key's name; "pkg.module" alone exports the
attribute of the same name (or the module itself, when the module's last name is the key).
"""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, table: dict[str, str]):
    """(`__getattr__`, `__dir__`) for `package`, resolving the names of `table` on first access."""

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attr = table[name].partition(":")
        module = importlib.import_module(module_name)
        if not attr and module_name.rsplit(".", 1)[-1] == name:
            value = module
        else:
            value = getattr(module, attr or name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
