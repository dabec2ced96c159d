"""The built-in plugins: importing this module registers them (datasets, samplers, losses).

The registry itself (``patentclip.plugins.registry``) imports no plugin, so there is no import loop between the
registry and the modules that register into it. ``load_builtin_plugins()`` is kept as the explicit call the
entry points make.
"""
from __future__ import annotations

from patentclip.plugins import arcface, losses, samplers
from patentclip.plugins.data import builder as data_builder

#: the modules whose import registered the built-in plugins
BUILTIN_MODULES = (losses, arcface, data_builder, samplers)


def load_builtin_plugins() -> tuple:
    """Nothing left to do: importing this module registered the built-in plugins; returns their modules."""
    return BUILTIN_MODULES
