"""Datasets, metrics, baselines, rate-distortion curves, BD-rate and plots."""
