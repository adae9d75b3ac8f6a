"""Averaging tensors across data-parallel learners (torch.distributed, any backend)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def is_distributed(group=None) -> bool:
    """True when a process group with more than one member is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def all_reduce_mean_(tensors: Sequence[torch.Tensor | None], group=None) -> None:
    """Averages ``tensors`` in place over all processes with ONE collective (no-op alone).

    The tensors are flattened into a single buffer, summed with ``all_reduce`` and divided
    by the world size. ``None`` entries (parameters without a gradient) are skipped;
    every process must pass the same shapes in the same order.
    """
    if not is_distributed(group):
        return
    present = [t for t in tensors if t is not None]
    if not present:
        return
    flat = torch.cat([t.detach().reshape(-1).to(present[0].dtype) for t in present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for t in present:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n
