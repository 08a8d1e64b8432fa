"""atomsift: choose pretraining data for interatomic potentials by chemical similarity, then train."""

__version__ = "0.1.0"
