"""An explicit name -> builder registry (in the spirit of fvcore's ``Registry``).

Duplicates fail loudly; an unknown name raises an error that lists every valid name.
"""
from __future__ import annotations

import difflib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry:
    """A plain dict of name -> object with metadata, e.g. ``MODELS``, ``DATASETS``, ``RECIPES``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable] = {}
        self._meta: Dict[str, dict] = {}

    def register(self, name: str, obj: Optional[Callable] = None, **meta):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            self._meta[name] = dict(meta)
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> Callable:
        if name not in self._items:
            raise UnknownNameError(self.unknown_message(name))
        return self._items[name]

    def meta(self, name: str) -> dict:
        self.get(name)
        return self._meta[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._items, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind} names: {', '.join(self.names())}"

    def names(self) -> List[str]:
        return list(self._items)

    def sort(self, key: Callable[[str], Any]) -> None:
        """Order the names by ``key(name)`` (registration order otherwise)."""
        self._items = {n: self._items[n] for n in sorted(self._items, key=key)}

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Option:
    """A declared option (a model family's ``model.<key>``, a training method's ``methods.<key>``):
    its type, default and one-line help, and what makes a value valid. The config is built from
    these declarations, so an option is written down once, next to the code that uses it.

    ``choices``: the valid values; ``check(value)`` returns why a value is invalid (``None`` when it
    is valid), e.g. ``"must be > 0"``. ``None`` is always valid: it means off or the default.
    """

    type: type
    default: Any = None
    help: str = ""
    choices: Tuple[Any, ...] = ()
    check: Optional[Callable[[Any], Optional[str]]] = None

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is not valid for this option (to follow the option's name), or None."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            valid = [str(c) for c in self.choices] + (["null"] if self.default is None else [])
            return f"{value!r} is not valid; use {', '.join(valid[:-1])} or {valid[-1]}"
        return self.check(value) if self.check is not None else None


def plugin_modules(path, skip: Tuple[str, ...] = ()) -> List[str]:
    """Names of the modules in a package directory (``__path__``), except ``skip`` and private ones,
    sorted: the files a package imports so that each registers itself. Nothing is kept by hand, and
    the caller imports each without catching errors: a plug-in that fails to import is an error."""
    return sorted(m.name for m in pkgutil.iter_modules(path)
                  if m.name not in skip and not m.name.startswith("_"))
