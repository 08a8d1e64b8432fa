"""The data layer: readers for every dataset of the method, records, sampling.

from atomsift.data import open_dataset
ds = open_dataset("ani1x-release.h5")      # format detected from the path
rec = ds[0]                                 # Record: numbers, positions (A), energy (eV), forces (eV/A)
atoms = rec.to_atoms()                      # ase.Atoms with a SinglePointCalculator
"""

from atomsift.data.base import Dataset
from atomsift.data.record import Record
from atomsift.data.registry import FORMATS, detect_format, open_dataset
from atomsift.data.sampling import class_balanced_indices, random_indices, save_subset

__all__ = [
    "FORMATS",
    "Dataset",
    "Record",
    "class_balanced_indices",
    "detect_format",
    "open_dataset",
    "random_indices",
    "save_subset",
]
