"""What coding needs of a trained EntropyBottleneck, without importing CompressAI.

Coding z takes only the bottleneck's medians and its quantized CDF tables, all stored in the
weights file. Loading these through CompressAI's ``EntropyBottleneck`` costs the import of
the whole ``compressai`` package (seconds: it pulls in datasets, point clouds, the zoo), so
models built for coding hold this module instead: it takes the same state-dict entries, keeps
the coding ones as buffers and drops the learned density (``matrices``, ``biases``,
``factors``), which only training uses. Its ``quantized_cdf``, ``offset``, ``cdf_length`` and
``medians`` match CompressAI's after ``update()``.
"""

from __future__ import annotations

import torch
from torch import nn

CODING_ENTRIES = ("quantiles", "_quantized_cdf", "_offset", "_cdf_length")


class BottleneckTables(nn.Module):
    """A frozen EntropyBottleneck of ``channels`` channels, for coding only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("quantiles", torch.zeros(channels, 1, 3))
        self.register_buffer("_quantized_cdf", torch.zeros(channels, 1, dtype=torch.int32))
        self.register_buffer("_offset", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("_cdf_length", torch.zeros(channels, dtype=torch.int32))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Take the coding entries whatever their sizes; ignore the learned density."""
        for name in CODING_ENTRIES:
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if name == "quantiles" and value.shape != self.quantiles.shape:
                error_msgs.append(f"{key}: shape {tuple(value.shape)}, expected "
                                  f"{tuple(self.quantiles.shape)}")
                continue
            setattr(self, name, value.detach().to(self.quantiles.device, getattr(
                self, name).dtype).clone())

    def update(self, **_) -> bool:
        raise RuntimeError("a model built for coding holds frozen bottleneck tables; "
                           "build it with for_coding=False to update or train it")

    @property
    def quantized_cdf(self) -> torch.Tensor:
        return self._quantized_cdf

    @property
    def offset(self) -> torch.Tensor:
        return self._offset

    @property
    def cdf_length(self) -> torch.Tensor:
        return self._cdf_length

    def medians(self) -> torch.Tensor:
        """(channels,) the bottleneck's medians, around which z is rounded."""
        return self.quantiles[:, 0, 1].detach()
