"""The one place the CLI runs code the user names: `--config FILE|MODULE` and `recoup sweep --space
FILE|MODULE`, each a Python file path or an importable module with one function to call."""

from __future__ import annotations

import importlib
import importlib.util
import os

from framework.errors import ConfigError
from framework.registry import import_user_module


def call_function_of(spec: str, field: str, function: str, example: str = ""):
    """`function()` of the .py file or module `spec`. An error raised by the user's own code keeps its
    traceback (it points into their file); a missing file or module, a file that is not Python, or a
    missing function is a ConfigError on `field`."""
    try:
        if spec.endswith(".py"):
            if not os.path.isfile(spec):
                raise ConfigError(field, f"no {field} file at {spec}")
            module_spec = importlib.util.spec_from_file_location(f"recoup_{field}", spec)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        elif not spec or spec.startswith(".") or "/" in spec:  # import_module would raise ValueError or TypeError
            raise ConfigError(field, f"{spec!r} is neither a .py file nor a module name{example}")
        else:
            module = import_user_module(spec)  # found in the current directory too
    except ImportError as e:
        raise ConfigError(field, f"cannot import {spec!r}: {e}") from None
    except SyntaxError as e:  # also bytes that are not UTF-8 text, and NUL bytes
        raise ConfigError(field, f"{e.filename or spec}{f' line {e.lineno}' if e.lineno else ''}: {e.msg}") from None
    if not callable(getattr(module, function, None)):
        raise ConfigError(field, f"{spec} has no {function}() function")
    return getattr(module, function)()
