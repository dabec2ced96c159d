"""A small name -> factory registry for the patent plugins (datasets, samplers, losses).

This module imports no plugin: the built-in ones register themselves when ``patentclip.plugins.builtin`` is
imported, and their contracts are in ``patentclip.plugins.contracts``.

Modelled on timm's model registry and torchtitan's train-spec registry: a plugin registers itself by
name with a decorator, the training loop looks it up by the name given on the command line, and a user
can add a plugin from their own module (``patentclip-train --plugins mypkg.myloss``) without editing
the loop.

    from patentclip.plugins.registry import LOSSES

    @LOSSES.register("my_loss")
    class MyLoss(torch.nn.Module):
        ...
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Iterable, List, Optional, TypeVar

T = TypeVar("T")


class Registry:
    """Maps names to factories (classes or functions) of one kind of plugin."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: Optional[str] = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` registers the decorated class or function."""

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot register {obj!r} as a {self.kind}: no name given")
            if key in self._entries and not override and self._entries[key] is not obj:
                raise ValueError(
                    f"a {self.kind} named {key!r} is already registered "
                    f"({self._entries[key].__module__}.{getattr(self._entries[key], '__qualname__', '')}); "
                    f"pass override=True to replace it"
                )
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; registered {self.kind} names: {', '.join(self.names()) or '(none)'}"
            ) from None

    def factory(self, name: str) -> Callable:
        """What builds the plugin from the command line: a registered class's ``from_args`` classmethod (its
        constructor takes explicit arguments), or the registered function itself."""
        obj = self.get(name)
        return getattr(obj, "from_args", obj) if isinstance(obj, type) else obj

    def build(self, name: str, *args, **kwargs):
        """``factory(name)(*args, **kwargs)``: e.g. ``LOSSES.build("clip", args, class_table)``."""
        return self.factory(name)(*args, **kwargs)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


DATASETS = Registry("dataset")
SAMPLERS = Registry("sampler")
LOSSES = Registry("loss")


def import_plugin_modules(modules: Iterable[str]) -> None:
    """Import user modules that register their own plugins (``--plugins a.b,c.d``)."""
    for mod in modules:
        mod = mod.strip()
        if not mod:
            continue
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ImportError(f"--plugins: cannot import plugin module {mod!r}: {exc}") from exc
