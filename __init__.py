"""lsq: a learned image codec quantizing its latent on the Leech lattice."""

__version__ = "0.1.0"
