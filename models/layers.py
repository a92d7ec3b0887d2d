"""CompressAI-free equivalents of the layers a model needs at coding time.

Importing any ``compressai`` submodule runs its package ``__init__``, which loads its
datasets (torch_geometric, torch._dynamo), scipy.stats and the model zoo: seconds on a
small machine. These copies let the coding path build the networks without that import.
They reproduce ``compressai.layers.GDN`` (with ``NonNegativeParametrizer`` and
``LowerBound``) and ``compressai.models.utils.conv``/``deconv`` exactly: the same
parameter and buffer names, so state dicts load either way, and the same operations in
the same order, so outputs and gradients are bit-for-bit equal (``tests/test_layers.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LowerBoundFunction(torch.autograd.Function):
    """max(x, bound), whose gradient passes where x >= bound or where it pushes x upwards."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through * grad_output, None


class LowerBound(nn.Module):
    """``torch.max(x, bound)`` with the straight-through gradient of CompressAI's LowerBound."""

    bound: Tensor

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.register_buffer("bound", torch.Tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return LowerBoundFunction.apply(x, self.bound)


class NonNegativeParametrizer(nn.Module):
    """Stores sqrt(v + pedestal) and returns max(., bound)^2 - pedestal: v stays >= minimum."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0, reparam_offset: float = 2**-18) -> None:
        super().__init__()
        self.minimum = float(minimum)
        self.reparam_offset = float(reparam_offset)
        self.register_buffer("pedestal", torch.Tensor([self.reparam_offset**2]))
        self.lower_bound = LowerBound((self.minimum + self.reparam_offset**2) ** 0.5)

    def init(self, x: Tensor) -> Tensor:
        """The stored value that represents x."""
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalization: y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2).

    ``inverse=True`` multiplies by the square root instead (IGDN).
    """

    def __init__(
        self,
        in_channels: int,
        inverse: bool = False,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
    ) -> None:
        super().__init__()
        self.inverse = bool(inverse)
        self.beta_reparam = NonNegativeParametrizer(minimum=float(beta_min))
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(in_channels)))
        self.gamma_reparam = NonNegativeParametrizer()
        gamma = float(gamma_init) * torch.eye(in_channels)
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.size(1)
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x**2, gamma, beta)
        if not torch.is_grad_enabled():  # coding: the same values, two fewer copies of x
            return (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(x)
        norm = torch.sqrt(norm) if self.inverse else torch.rsqrt(norm)
        return x * norm


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Strided convolution with 'same' padding (CompressAI's ``models.utils.conv``)."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=kernel_size, stride=stride,
        padding=kernel_size // 2,
    )


def deconv(
    in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2
) -> nn.ConvTranspose2d:
    """Transposed convolution that upsamples by exactly ``stride`` (``models.utils.deconv``)."""
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel_size=kernel_size, stride=stride,
        output_padding=stride - 1, padding=kernel_size // 2,
    )
