"""Several GPUs through torchrun (DDP): joining the process group, wrapping the model, and
the few collectives the trainer needs. With one process every function is a no-op."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def setup(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if world == 1:
        return 0, 1, torch.device("cuda" if want_cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if want_cuda else "gloo")
    device = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    return dist.get_rank(), world, device


def wrap(model: nn.Module, world: int, device: torch.device) -> nn.Module:
    """``model`` in DDP when there are several processes; the '.quantiles' (aux) parameters
    are left out of DDP and averaged by :func:`average_grads`."""
    if world == 1:
        return model
    aux_names = [n for n, p in model.named_parameters() if n.endswith(".quantiles")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, aux_names)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def average_grads(params: list[nn.Parameter], world: int) -> None:
    if world > 1:
        for p in params:
            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)


def broadcast_flags(flags: torch.Tensor, world: int) -> torch.Tensor:
    """Rank 0's decisions (stop, checkpoint, roll back) on every rank."""
    if world > 1:
        dist.broadcast(flags, src=0)
    return flags


def gather(obj: object, world: int) -> list:
    """Every rank's ``obj``, in rank order."""
    if world == 1:
        return [obj]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def finish(world: int) -> None:
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
