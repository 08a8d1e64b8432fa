"""Backbones (GemNet-OC, PaiNN), heads, and loading / predicting with trained models.

from atomsift.models import load_checkpoint
model = load_checkpoint("jmp-s.pt")                  # or an atomsift / fairchem-core 1.10 checkpoint
model.predict(list_of_atoms)                         # [{"energy": eV, "forces": (n, 3) eV/A}, ...]
atoms.calc = model.as_calculator()
"""

from atomsift.models.base import Backbone, BackboneOutput
from atomsift.models.checkpoint import LoadReport, load_checkpoint, save_checkpoint
from atomsift.models.heads import HeadSpec
from atomsift.models.model import AtomsModel
from atomsift.models.registry import BACKBONES, build_backbone

__all__ = [
    "BACKBONES",
    "AtomsModel",
    "Backbone",
    "BackboneOutput",
    "HeadSpec",
    "LoadReport",
    "build_backbone",
    "load_checkpoint",
    "save_checkpoint",
]
