"""Optional parts of peapod and the pip extra that installs each (pyproject's optional-dependencies)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise `MissingExtra` saying which extra `purpose` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{purpose} needs {module.split('.')[0]}: pip install 'peapod[{extra}]'") from e


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
