"""napari-segtune: tiled U-Net segmentation for microscopy, with fine-tuning in napari.

Importing this package loads no GUI toolkit; the napari plugin lives in ``segtune._napari``.
"""

__version__ = "0.1.0"
