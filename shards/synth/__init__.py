"""Synthetic design patents for tests, demos and smoke-training runs (see :mod:`.corpus` for what they are).

Modules: :mod:`.geometry` (3-D wire-frame toolkit), :mod:`.families` (one parametric family per class),
:mod:`.classes` (the class table), :mod:`.render` (views and drawing), :mod:`.captions` (caption templates),
:mod:`.corpus` (the seeded long-tailed corpus and its manifest).
"""
from .captions import make_captions
from .classes import DESIGN_CLASSES, DesignClass
from .corpus import class_counts, generate_synthetic_patents
from .render import SUPPORTED_VIEWS, render_design

__all__ = ["DesignClass", "DESIGN_CLASSES", "SUPPORTED_VIEWS", "generate_synthetic_patents", "render_design",
           "class_counts", "make_captions"]
