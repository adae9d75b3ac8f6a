"""When and where K-FAC statistics are updated, averaged across learners, and applied.

Usage (plain torch, no RLlib needed)::

    kfac = KFACPreconditioner(linear_layers, [(log_std, 2.0)], damping=1e-2)
    with kfac.capture():                      # true-Fisher backward only
        dist = policy(obs); a = dist.sample()
        torch.autograd.grad(-dist.log_prob(a).sum(-1).mean(), kfac.params)
    kfac.update_factors()                     # average across learners, fold, decompose
    grads = torch.autograd.grad(surrogate, kfac.params)
    natural = kfac.precondition(grads)        # F^-1 g
    kl_estimate = 0.5 * kfac.quad(natural)    # d^T F d from the factors

Running factors: a plain mean (weight 1/k) for the first ``burn_in`` updates, so the
identity initialisation does not bias them, then an EMA with ``decay``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rllib_kfcpo.kfac.block import DiagonalBlock, KroneckerBlock
from rllib_kfcpo.kfac.distributed import all_reduce_mean_
from rllib_kfcpo.kfac.layer import LinearStatistics


class KFACPreconditioner:
    """K-FAC over a set of Linear layers plus parameters with exact diagonal Fisher."""

    def __init__(
        self,
        layers: Sequence[nn.Linear],
        diagonal: Sequence[tuple[nn.Parameter, float | torch.Tensor]] = (),
        *,
        damping: float = 1e-2,
        decay: float = 0.95,
        burn_in: int = 10,
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("layers is empty: give the policy's nn.Linear layers.")
        for layer in layers:
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"layers must be nn.Linear, got {type(layer).__name__}.")
        if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0):
            raise ValueError(f"damping={damping!r} is invalid: it must be a finite number > 0.")
        if not (isinstance(decay, (int, float)) and 0 < decay < 1):
            raise ValueError(f"decay={decay!r} is invalid: it must be in (0, 1).")
        if not (isinstance(burn_in, int) and burn_in >= 0):
            raise ValueError(f"burn_in={burn_in!r} is invalid: it must be an integer >= 0.")
        self.damping = float(damping)
        self.decay = float(decay)
        self.burn_in = burn_in
        self.layers = layers
        self.stats = [LinearStatistics(layer) for layer in layers]
        self.blocks = [
            KroneckerBlock(layer.in_features, layer.out_features, layer.bias is not None,
                           device=layer.weight.device, dtype=layer.weight.dtype)
            for layer in layers
        ]
        self.diagonal = [(p, DiagonalBlock(p, f)) for p, f in diagonal]
        self.params: list[nn.Parameter] = []
        for layer in layers:
            self.params.append(layer.weight)
            if layer.bias is not None:
                self.params.append(layer.bias)
        self.params += [p for p, _ in self.diagonal]
        self.num_updates = 0
        self.num_skipped_updates = 0
        self.num_eigh_failures = 0
        self.seconds = {"capture_fold": 0.0, "eigh": 0.0, "precondition": 0.0}

    # --- Statistics -------------------------------------------------------------------
    @contextmanager
    def capture(self) -> Iterator[None]:
        """Records layer statistics for the forward/backward run inside the block only."""
        for s in self.stats:
            s.capturing = True
        try:
            yield
        finally:
            for s in self.stats:
                s.capturing = False

    def update_factors(self) -> bool:
        """Averages the captured batch factors across learners and folds them in.

        Returns False (and counts it) when the batch factors are non-finite (nothing is
        folded in) or an eigendecomposition fails (the previous one is kept).
        """
        started = time.perf_counter()
        factors = [t for s in self.stats for t in s.batch_factors()]
        all_reduce_mean_(factors)  # one collective for every factor of every layer
        self.seconds["capture_fold"] += time.perf_counter() - started
        if not all(bool(torch.isfinite(f).all()) for f in factors):
            self.num_skipped_updates += 1
            return False
        self.num_updates += 1
        k = self.num_updates
        weight = 1.0 / k if k <= max(self.burn_in, 1) else 1.0 - self.decay
        for i, block in enumerate(self.blocks):
            block.fold(factors[2 * i], factors[2 * i + 1], weight)
        started = time.perf_counter()
        ok = True
        for block in self.blocks:
            try:
                block.decompose()
            except (torch.linalg.LinAlgError, RuntimeError):
                self.num_eigh_failures += 1
                ok = False
        self.seconds["eigh"] += time.perf_counter() - started
        return ok

    # --- Using the curvature ------------------------------------------------------------
    def _per_block(self, vectors: Sequence[torch.Tensor]) -> Iterator[Any]:
        if len(vectors) != len(self.params):
            raise ValueError(f"expected {len(self.params)} tensors (one per param), "
                             f"got {len(vectors)}.")
        i = 0
        for block in self.blocks:
            if block.has_bias:
                yield block, vectors[i], vectors[i + 1]
                i += 2
            else:
                yield block, vectors[i], None
                i += 1
        for (_, block), v in zip(self.diagonal, vectors[i:]):
            yield block, v, None

    def precondition(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Damped natural gradient F^-1 g, aligned with ``params``."""
        started = time.perf_counter()
        out: list[torch.Tensor] = []
        for block, g, g_b in self._per_block(grads):
            if isinstance(block, KroneckerBlock):
                w, b = block.precondition(g, g_b, self.damping)
                out += [w] if b is None else [w, b]
            else:
                out.append(block.precondition(g, self.damping))
        self.seconds["precondition"] += time.perf_counter() - started
        return out

    def inner(self, u: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> torch.Tensor:
        """u^T F v with the undamped factors (the Fisher metric)."""
        total = torch.zeros((), device=self.params[0].device, dtype=self.params[0].dtype)
        for (block, uw, ub), (_, vw, vb) in zip(self._per_block(u), self._per_block(v)):
            if isinstance(block, KroneckerBlock):
                total = total + block.inner(uw, ub, vw, vb)
            else:
                total = total + block.inner(uw, vw)
        return total

    def quad(self, d: Sequence[torch.Tensor]) -> torch.Tensor:
        """d^T F d; 0.5 d^T F d estimates the KL of a step d."""
        return self.inner(d, d)

    # --- Diagnostics and state ----------------------------------------------------------
    def diagnostics(self) -> dict[str, float]:
        """Damping, condition numbers, counters and seconds spent."""
        conds = [block.condition_numbers() for block in self.blocks]
        cond_a = [c[0] for c in conds]
        cond_g = [c[1] for c in conds]
        return {
            "damping": self.damping,
            "cond_A_max": max(cond_a),
            "cond_A_mean": sum(cond_a) / len(cond_a),
            "cond_G_max": max(cond_g),
            "cond_G_mean": sum(cond_g) / len(cond_g),
            "factor_updates": float(self.num_updates),
            "skipped_updates": float(self.num_skipped_updates),
            "eigh_failures": float(self.num_eigh_failures),
            **{f"seconds_{k}": v for k, v in self.seconds.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Running factors and counters (eigendecompositions are recomputed on load)."""
        return {
            "blocks": [block.state_dict() for block in self.blocks],
            "num_updates": self.num_updates,
            "num_skipped_updates": self.num_skipped_updates,
            "num_eigh_failures": self.num_eigh_failures,
            "damping": self.damping,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        if len(state["blocks"]) != len(self.blocks):
            raise ValueError(f"K-FAC state has {len(state['blocks'])} layers, this network "
                             f"{len(self.blocks)}: the checkpoint is from another network.")
        for block, block_state in zip(self.blocks, state["blocks"]):
            block.load_state_dict(block_state)
        self.num_updates = int(state["num_updates"])
        self.num_skipped_updates = int(state["num_skipped_updates"])
        self.num_eigh_failures = int(state["num_eigh_failures"])
        self.damping = float(state["damping"])
