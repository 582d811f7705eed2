"""`Registry`: the names one config field accepts, each with the import path of the code it builds.

A registry is the one place a name is written. Its entries are strings ("module:attr"), so importing
a registry imports none of the code behind it: the run check (`framework.runner.check`) validates
every name a config gives before jax or datasets are imported, and `registry[name]` imports the one
entry the build step asks for.

    OPTIMIZERS = Registry("optim.optimizer", "optimizer", {"adamw": "framework.training.optimizers:adamw"})
    OPTIMIZERS.check("adamw")        # raises ConfigError naming the field and the allowed names
    make = OPTIMIZERS["adamw"]       # imports framework.training.optimizers
    "|".join(OPTIMIZERS)             # the names, in order
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from framework.errors import ConfigError


def import_user_module(name: str):
    """`importlib.import_module(name)`, finding modules in the current directory as `python -m` and
    uvicorn do (the `recoup` script alone would not look there). Only a user's own import path gets
    here, and the directory is added once, when first needed."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


def import_object(spec: str, field: str) -> Any:
    """`"package.module:attribute"` -> the attribute, with errors that name `field` and say which
    part of the path is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(field, f"{spec!r} is neither a built-in name nor an import path 'module:attribute'")
    try:
        module = import_user_module(module_name)
    except ImportError as e:
        raise ConfigError(field, f"cannot import module {module_name!r} ({e})") from None
    if not hasattr(module, attr):
        public = sorted(n for n in dir(module) if not n.startswith("_"))[:20]
        raise ConfigError(field, f"module {module_name!r} has no attribute {attr!r} (it has: {', '.join(public)})")
    obj = getattr(module, attr)
    if not callable(obj):
        raise ConfigError(field, f"{spec} is not callable")
    return obj


class Registry(Mapping[str, Any]):
    """Names -> code for the config field `field`; `kind` is what one entry is, for messages.

    With `import_paths`, the field also takes a user's own "module:attr" (a custom curriculum):
    `check` accepts any such string and `resolve` imports it.
    """

    def __init__(self, field: str, kind: str, entries: Mapping[str, str], import_paths: bool = False):
        self.field, self.kind, self.import_paths = field, kind, import_paths
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Any:
        return import_object(self._entries[name], self.field)  # KeyError for an unknown name, as a dict

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.field!r}: {', '.join(self._entries)})"

    def check(self, name: object) -> None:
        """Raise a ConfigError naming the field and the allowed names unless `name` is one of them
        (or, with `import_paths`, any "module:attr"). Imports nothing."""
        if isinstance(name, str) and (name in self._entries or (self.import_paths and ":" in name)):
            return
        if self.import_paths:
            raise ConfigError(self.field, f"unknown {self.kind} {name!r} (or give an import path 'module:attr')",
                              list(self))
        raise ConfigError(self.field, f"unknown {self.kind} {name!r}", list(self))

    def resolve(self, name: str) -> Any:
        """The code behind a built-in name or, with `import_paths`, a user's "module:attr"."""
        if name in self._entries:
            return self[name]
        self.check(name)
        return import_object(name, self.field)
