"""Averaging tensors across data-parallel learners (torch.distributed, any backend).

A leaf module shared by the K-FAC component (``rllib_kfcpo.kfac``) and the learners'
shared machinery (``rllib_kfcpo.safe``).

Used for the K-FAC batch factors (one collective per factor update) and for gradients,
losses and KL values of the learners. Without an initialised process group of more than one
member every function here is a no-op, so single-process code needs no special case.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import Any

import torch
import torch.distributed as dist


def is_distributed(group: Any = None) -> bool:
    """True when torch.distributed is available, initialised, and ``group`` has > 1 member."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def all_reduce_mean_(tensors: Sequence[torch.Tensor | None], group: Any = None) -> None:
    """Averages floating-point ``tensors`` in place over all processes with ONE collective.

    The tensors are flattened and concatenated into a single buffer (in their promoted
    dtype), summed with ``all_reduce`` and divided by the world size, then copied back.
    ``None`` entries (parameters without a gradient) are skipped; every process must pass
    the same shapes in the same order. A no-op without a multi-process group.
    """
    if not is_distributed(group):
        return
    present = [t for t in tensors if t is not None]
    if not present:
        return
    dtype = reduce(torch.promote_types, (t.dtype for t in present))
    if not dtype.is_floating_point:
        raise TypeError(f"all_reduce_mean_ averages floating-point tensors, got {dtype}.")
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for t in present:
        n = t.numel()
        with torch.no_grad():
            t.copy_(flat[offset:offset + n].view(t.shape))
        offset += n
