"""Synthetic microscopy images with exact instance masks: fluorescent nuclei (2D/3D, optionally
with a Golgi channel) in :mod:`.nuclei`, brightfield organoids in :mod:`.organoids`.

Everything is drawn from one seeded generator, so a seed gives the same image every time.
"""

from segtune.core.synthetic.nuclei import (
    SyntheticNuclei,
    SyntheticNucleiGolgi,
    random_nuclei_parameters,
    synthetic_nuclei,
    synthetic_nuclei_golgi,
)
from segtune.core.synthetic.organoids import SyntheticOrganoids, synthetic_organoids

__all__ = [
    "SyntheticNuclei",
    "SyntheticNucleiGolgi",
    "SyntheticOrganoids",
    "random_nuclei_parameters",
    "synthetic_nuclei",
    "synthetic_nuclei_golgi",
    "synthetic_organoids",
]
