"""One name -> object registry for every swappable family (DESIGN habit 1): models, losses, samplers,
explanation methods, report sections, OOD scores and attacks.

Learned from timm's `register_model` / `list_models`: a decorator registers an entry under a name, one call
lists the names, and an unknown name fails with one line that names the valid ones (and close matches):

    ATTACKS: Registry[AttackFn] = Registry("attack")

    @ATTACKS.register("fgsm")
    def fgsm(...): ...

    ATTACKS.names()          # ['fgsm', 'pgd']
    ATTACKS.lookup("fgm")    # MedclfError: unknown attack 'fgm' (did you mean fgsm?); valid: fgsm, pgd

Written by hand: a registry is a dict with a good error message; no library's version is worth a dependency.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, Sequence, TypeVar, overload

from medclf.errors import MedclfError

T = TypeVar("T")

# A suggestion must be closer than difflib's default (0.6): 'dice' is not a typo of 'ce'.
_CLOSE_ENOUGH = 0.75


class Registry(Generic[T]):
    """Entries of one family by name.

    kind: what one entry is, in messages ("loss", "OOD score").
    field: the config key or flag that names an entry ("loss.name"); it starts the error message.
    error: the error class an unknown name raises (ConfigError for config keys).
    order: how `names()` lists them: None alphabetically; a sequence of names, those first in that order, then
        the others in registration order (built-in entries in a chosen order, whichever module loaded first).
    load: imports the modules that register the built-in entries; run once, before the first listing or lookup
        (registering modules import the registry, so the registry cannot import them first).
    valid_tail: text after the valid names, for names the registry does not list (", or any timm model ...").
    """

    def __init__(self, kind: str, *, field: str | None = None, error: type[MedclfError] = MedclfError,
                 order: Sequence[str] | None = None, load: Callable[[], None] | None = None,
                 valid_tail: str = "") -> None:
        self.kind = kind
        self.field = field
        self.error = error
        self.order = order
        self.valid_tail = valid_tail
        self._load = load
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """Add (or replace) `name`: `register(name, entry)`, or `@register(name)` above a function or class."""
        if entry is not None:
            self._entries[name] = entry
            return entry

        def add(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove `name` (no error when absent)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, alphabetically or in the registry's `order`."""
        self._load_builtin()
        if self.order is None:
            return sorted(self._entries)
        first = [n for n in self.order if n in self._entries]
        return first + [n for n in self._entries if n not in first]

    def lookup(self, name: str) -> T:
        """The entry registered as `name`; an unknown name raises `error` with one line listing the valid ones."""
        self._load_builtin()
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def unknown(self, name: str) -> MedclfError:
        """The one-line error for a name that is not registered."""
        valid = self.names()
        close = difflib.get_close_matches(name, valid, n=3, cutoff=_CLOSE_ENOUGH)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        where = f"{self.field}: " if self.field else ""
        return self.error(f"{where}unknown {self.kind} {name!r}{hint}; valid: {', '.join(valid)}{self.valid_tail}")

    def __getitem__(self, name: str) -> T:
        """`registry[name]` is `lookup(name)`: an unknown name raises the one-line error, not a KeyError."""
        return self.lookup(name)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def values(self) -> list[T]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load_builtin()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def _load_builtin(self) -> None:
        load, self._load = self._load, None  # cleared first: the modules it imports register into this registry
        if load is not None:
            load()
