"""Old public names, kept for a while: reading one warns and gives the value under its new name."""

from __future__ import annotations

import warnings
from typing import Any


def renamed(old: str, new: str, note: str = "") -> property:
    """A read-only property ``old`` of a class that reads attribute ``new`` with a DeprecationWarning
    (``note``: why, in a few words, for the docstring)."""

    def get(self: Any) -> Any:
        warnings.warn(f"{type(self).__name__}.{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    return property(get, doc=f"Deprecated name of :attr:`{new}`{f' ({note})' if note else ''}.")
