"""Sliding-window inference: seam-free exact tiling (or MONAI-style Gaussian blending) in memory or streamed to zarr.

Exact tiling
------------
A convolutional network with ``p`` poolings by two and a finite receptive field is, away from
the borders of its input, equivariant to shifts by multiples of ``2**p`` and blind to anything
farther than its receptive field. So a tile whose origin lies on that grid and that reaches at
least one receptive-field radius (the *halo*) beyond the region we keep from it gives, in that
region, exactly what one forward pass over the whole image gives. At the image border a tile
simply ends where the image ends, as the whole-image pass does.

The model is a callable this module knows nothing about, so both numbers are measured once per
model (:func:`probe_model`): the halo by perturbing a slab of a random input and seeing how far
the output changes, the grid by checking which shifts of the input shift the output exactly.

"One untiled forward pass" is defined as: pad the image at its far end (reflection, or edge
replication for images thinner than the padding) to a multiple of the grid, run the model once,
crop. For sizes that are already multiples this is just ``model(image)``; it is also what
:class:`segtune.core.models.unet.UNet` does internally for other sizes.

Tile size comes from the memory the device has free (or ``memory_limit``); the planner picks,
per axis, the number of tiles that minimises the pixels computed, so an image that fits is one
tile and the overhead of halos is paid only where memory forces several.

Where each part lives
---------------------
``probe``     :class:`ModelGeometry`, :func:`probe_model`, :func:`model_geometry` (receptive field,
              alignment grid, the geometry caches)
``runner``    :class:`Runner` (eval copy, BatchNorm folding, channels-last), out-of-memory tests
``tiling``    :class:`TilePlan`, :func:`plan_tiles`, Gaussian windows and weights
``windows``   :class:`Source` and :class:`Sink` (windows in, kept regions out), the output
              array, :func:`memory_budget`, :func:`parse_bytes`
``engine``    :func:`predict_raw` and :func:`execute`, the loop that runs the tiles
``inputs``    :func:`resolve_model`, :func:`as_tczyx`, channel choice, the normaliser
``frontend``  :func:`predict` on TCZYX stacks, :class:`PredictionResult`, its option groups
              :class:`TilingOptions` and :class:`ObjectOptions`, :func:`whole_image_settings`
``files``     :func:`predict_file`: one image file in, its label file out (``segtune predict``
              and each task of :mod:`segtune.core.parallel_predict`)
"""

from segtune.core.predict.engine import Job, execute, predict_raw
from segtune.core.predict.files import PredictedFile, predict_file
from segtune.core.predict.frontend import (
    ObjectOptions,
    PredictionResult,
    TilingOptions,
    predict,
    whole_image_settings,
)
from segtune.core.predict.inputs import as_tczyx, normalizer, resolve_model, select_channels
from segtune.core.predict.probe import ModelGeometry, model_geometry, probe_model
from segtune.core.predict.runner import PRECISIONS, Runner
from segtune.core.predict.tiling import BLENDS, TilePlan, plan_tiles
from segtune.core.predict.windows import (
    Source,
    compute,
    far_end_pad_mode,
    memory_budget,
    parse_bytes,
)

__all__ = [
    "BLENDS",
    "Job",
    "ModelGeometry",
    "ObjectOptions",
    "PRECISIONS",
    "PredictedFile",
    "PredictionResult",
    "Runner",
    "Source",
    "TilePlan",
    "TilingOptions",
    "as_tczyx",
    "compute",
    "execute",
    "far_end_pad_mode",
    "memory_budget",
    "model_geometry",
    "normalizer",
    "parse_bytes",
    "plan_tiles",
    "predict",
    "predict_file",
    "predict_raw",
    "probe_model",
    "resolve_model",
    "select_channels",
    "whole_image_settings",
]
