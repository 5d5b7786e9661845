"""The headless engine of napari-segtune: no Qt, no napari, no display.

Submodules are imported on demand (``from segtune.core import io``); this package itself
imports nothing heavy.
"""
