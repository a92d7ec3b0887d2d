"""Lattice, quantizers, entropy coding and bitstream: no neural networks."""
