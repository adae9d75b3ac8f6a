"""When and where K-FAC statistics are updated, averaged across learners, and applied.

Usage (plain torch, no RLlib needed)::

    kfac = KFACPreconditioner(linear_layers, [(log_std, 2.0)], damping=1e-2)
    with kfac.capture():                      # true-Fisher backward only
        dist = policy(obs)
        sampled = dist.sample()               # a~ from the CURRENT policy
        torch.autograd.grad(-dist.log_prob(sampled).sum(-1).mean(), kfac.params)
    kfac.update_factors()                     # all-reduce, fold, decompose
    grads = torch.autograd.grad(surrogate, kfac.params)
    natural = kfac.precondition(grads)        # (F + damping I)^-1 g, per block
    kl_estimate = 0.5 * kfac.quad(natural)    # d^T F d from the undamped factors

The Fisher is approximated block-diagonally: one ``A (x) G`` block per Linear layer
(``block.py``) and one exact diagonal block per extra parameter (a log-std).

Running factors: with ``k`` the number of folded updates (this one included), the batch
factors enter with weight ``1/k`` while ``k <= burn_in`` (a plain mean of the batches seen
so far, so the identity initialisation leaves no trace), then with weight ``1 - decay``
(EMA). ``burn_in=0`` is an EMA from the identity (ACKTR-style cold start).

Across data-parallel learners, the batch factors of every layer are averaged with ONE
all-reduce before the fold, and each learner decomposes locally (kfac-pytorch's
communication-optimal mode); with equal per-learner batch sizes this equals the single-learner
full-batch factors. All learners must call :meth:`KFACPreconditioner.update_factors` the same
number of times. Since the checks below run on the averaged factors, every learner takes the
same decision.

Numerical safety: non-finite batch factors are not folded in (``skipped_updates``); if an
eigendecomposition fails or is non-finite, the whole update is undone (running factors of
every block back to their previous values, previous decompositions kept; ``eigh_failures``),
so factors and decompositions always match, and a checkpoint restores the same
preconditioning.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rllib_kfcpo.kfac.block import DiagonalBlock, KroneckerBlock
from rllib_kfcpo.kfac.distributed import all_reduce_mean_
from rllib_kfcpo.kfac.layer import FIRST_LAYER_HOOK_WARNING, LinearStatistics


def _check_damping(damping: Any) -> float:
    if (isinstance(damping, bool) or not isinstance(damping, numbers.Real)
            or not math.isfinite(damping) or damping <= 0):
        raise ValueError(f"damping={damping!r} is invalid: it must be a finite number > 0 "
                         "(typical 1e-3..1e-1).")
    return float(damping)


class KFACPreconditioner:
    """K-FAC over a set of ``nn.Linear`` layers plus parameters with an exact diagonal Fisher.

    Args:
        layers: the policy network's Linear layers (non-empty, no duplicates).
        diagonal: ``(parameter, diagonal Fisher)`` pairs for parameters outside the layers,
            e.g. ``[(log_std, 2.0)]`` for a state-independent Gaussian log-std.
        damping: added to the Kronecker eigenvalue products and to the diagonal Fisher;
            finite, > 0. Settable later (``kfac.damping = ...``).
        decay: EMA decay of the running factors after the burn-in, in (0, 1).
        burn_in: number of first updates averaged plainly (weight 1/k), integer >= 0.
    """

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
            raise ValueError("layers=[] is invalid: give at least one nn.Linear layer "
                             "(the policy network's Linear layers).")
        for i, layer in enumerate(layers):
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"layers[{i}]={type(layer).__name__} is invalid: every layer "
                                 "must be an nn.Linear.")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("layers is invalid: the same nn.Linear appears more than once.")
        self._damping = _check_damping(damping)
        if (isinstance(decay, bool) or not isinstance(decay, numbers.Real)
                or not 0 < decay < 1):
            raise ValueError(f"decay={decay!r} is invalid: it must be in (0, 1) "
                             "(typical 0.95..0.99).")
        if isinstance(burn_in, bool) or not isinstance(burn_in, numbers.Integral) or burn_in < 0:
            raise ValueError(f"burn_in={burn_in!r} is invalid: it must be an integer >= 0.")
        self.decay = float(decay)
        self.burn_in = int(burn_in)

        self.layers = layers
        self.stats = [LinearStatistics(layer) for layer in layers]
        self.blocks = [
            KroneckerBlock(layer.in_features, layer.out_features, layer.bias is not None,
                           device=layer.weight.device, dtype=layer.weight.dtype)
            for layer in layers
        ]
        layer_params: list[nn.Parameter] = []
        for layer in layers:
            layer_params.append(layer.weight)
            if layer.bias is not None:
                layer_params.append(layer.bias)
        self.diagonal: list[tuple[nn.Parameter, DiagonalBlock]] = []
        for i, entry in enumerate(diagonal):
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2
                    and isinstance(entry[0], torch.Tensor)):
                raise ValueError(f"diagonal[{i}] ({type(entry).__name__}) is invalid: it must be a "
                                 "(parameter, diagonal Fisher) pair.")
            param, fisher = entry
            if any(param is p for p in layer_params) or any(param is p for p, _ in self.diagonal):
                raise ValueError(f"diagonal[{i}] is invalid: that parameter is already covered "
                                 "by a layer or an earlier diagonal entry.")
            self.diagonal.append((param, DiagonalBlock(param, fisher)))
        self._params = layer_params + [p for p, _ in self.diagonal]

        self.num_updates = 0
        self.num_skipped_updates = 0
        self.num_eigh_failures = 0
        self.seconds = {"capture_fold": 0.0, "eigh": 0.0, "precondition": 0.0}
        self._capturing = False

    # --- Properties -------------------------------------------------------------------
    @property
    def params(self) -> list[nn.Parameter]:
        """Canonical order: each layer's weight then bias, then the diagonal parameters."""
        return list(self._params)

    @property
    def damping(self) -> float:
        """Damping of the natural gradient (not of :meth:`inner`)."""
        return self._damping

    @damping.setter
    def damping(self, value: float) -> None:
        self._damping = _check_damping(value)

    # --- Statistics -------------------------------------------------------------------
    @contextmanager
    def capture(self) -> Iterator[None]:
        """Records layer statistics for the forward and backward run inside the block only.

        Run exactly one differentiable policy forward and the backward of
        ``-mean(log pi(a~|s))`` (a~ sampled from the current policy) inside, then call
        :meth:`update_factors`. Any previous, unused capture is discarded on entry.
        """
        if self._capturing:
            raise RuntimeError("KFACPreconditioner.capture() cannot be nested.")
        self._capturing = True
        for stats in self.stats:
            stats.start_capture()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=FIRST_LAYER_HOOK_WARNING,
                                        category=UserWarning)
                yield
        finally:
            for stats in self.stats:
                stats.stop_capture()
            self._capturing = False

    def update_factors(self) -> bool:
        """Turns the last capture into running factors and recomputes the decompositions.

        Batch factors of all layers are averaged across learners with one all-reduce, then
        folded (plain mean during the burn-in, EMA afterwards) and decomposed.

        Returns:
            True when the update was applied; False when it was skipped because the batch
            factors were non-finite, or undone because an eigendecomposition failed (both
            counted in :meth:`diagnostics`).

        Raises:
            RuntimeError: nothing was captured since the last call.
        """
        started = time.perf_counter()
        try:
            factors = [t for stats in self.stats for t in stats.batch_factors()]
        finally:
            for stats in self.stats:
                stats.clear()
        all_reduce_mean_(factors)  # one collective for every factor of every layer
        finite = bool(torch.stack([torch.isfinite(f).all() for f in factors]).all())
        if not finite:
            self.num_skipped_updates += 1
            self.seconds["capture_fold"] += time.perf_counter() - started
            return False
        k = self.num_updates + 1
        weight = 1.0 / k if k <= self.burn_in else 1.0 - self.decay
        snapshots = [block.snapshot() for block in self.blocks]
        for i, block in enumerate(self.blocks):
            block.fold(factors[2 * i], factors[2 * i + 1], weight)
        self.seconds["capture_fold"] += time.perf_counter() - started

        started = time.perf_counter()
        try:
            decompositions = [block.compute_decomposition() for block in self.blocks]
        except torch.linalg.LinAlgError:
            for block, snapshot in zip(self.blocks, snapshots, strict=True):
                block.restore(snapshot)
            self.num_eigh_failures += 1
            return False
        finally:
            self.seconds["eigh"] += time.perf_counter() - started
        for block, decomposition in zip(self.blocks, decompositions, strict=True):
            block.set_decomposition(decomposition)
        self.num_updates = k
        return True

    # --- Using the curvature ----------------------------------------------------------
    def _per_block(self, vectors: Sequence[torch.Tensor], name: str) -> Iterator[Any]:
        """Yields (block, tensors of that block) in canonical order."""
        if len(vectors) != len(self._params):
            raise ValueError(f"{name} has {len(vectors)} tensors, expected {len(self._params)} "
                             "(one per entry of params, in that order).")
        i = 0
        for block in self.blocks:
            width = 2 if block.has_bias else 1
            yield block, tuple(vectors[i:i + width])
            i += width
        for (_, block), v in zip(self.diagonal, vectors[i:], strict=True):
            yield block, (v,)

    def precondition(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Damped natural gradient ``(F + damping I)^-1 g``, aligned with :attr:`params`."""
        started = time.perf_counter()
        out: list[torch.Tensor] = []
        for block, tensors in self._per_block(grads, "grads"):
            if isinstance(block, KroneckerBlock):
                w, b = block.precondition(*tensors, damping=self._damping)
                out += [w] if b is None else [w, b]
            else:
                out.append(block.precondition(tensors[0], damping=self._damping))
        self.seconds["precondition"] += time.perf_counter() - started
        return out

    def inner(self, u: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> torch.Tensor:
        """``u^T F v`` with the undamped factors, summed over all blocks (a 0-d tensor)."""
        total = torch.zeros((), device=self._params[0].device, dtype=self._params[0].dtype)
        pairs = zip(self._per_block(u, "u"), self._per_block(v, "v"), strict=True)
        for (block, tu), (_, tv) in pairs:
            if isinstance(block, KroneckerBlock):
                total = total + block.inner(tu, tv)
            else:
                total = total + block.inner(tu[0], tv[0])
        return total

    def quad(self, d: Sequence[torch.Tensor]) -> torch.Tensor:
        """``d^T F d``; ``0.5 d^T F d`` is the quadratic KL estimate of a step ``d``."""
        return self.inner(d, d)

    # --- Diagnostics and state --------------------------------------------------------
    def diagnostics(self) -> dict[str, float]:
        """Damping, condition numbers of A and G (undamped), counters and seconds spent.

        Seconds are host wall-clock (on GPU, asynchronous kernels may be counted in a
        later phase).
        """
        conds = [block.condition_numbers() for block in self.blocks]
        cond_a = [c[0] for c in conds]
        cond_g = [c[1] for c in conds]
        return {
            "damping": self._damping,
            "cond_A_max": max(cond_a),
            "cond_A_mean": sum(cond_a) / len(cond_a),
            "cond_G_max": max(cond_g),
            "cond_G_mean": sum(cond_g) / len(cond_g),
            "factor_updates": float(self.num_updates),
            "skipped_updates": float(self.num_skipped_updates),
            "eigh_failures": float(self.num_eigh_failures),
            **{f"seconds_{key}": value for key, value in self.seconds.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Running factors (copies), counters and damping; decompositions are recomputed
        on load."""
        return {
            "blocks": [block.state_dict() for block in self.blocks],
            "num_updates": self.num_updates,
            "num_skipped_updates": self.num_skipped_updates,
            "num_eigh_failures": self.num_eigh_failures,
            "damping": self._damping,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (of a preconditioner over the same layer shapes)."""
        if len(state["blocks"]) != len(self.blocks):
            raise ValueError(f"K-FAC state has {len(state['blocks'])} layers, this "
                             f"preconditioner {len(self.blocks)}: it is from another network.")
        for block, block_state in zip(self.blocks, state["blocks"], strict=True):
            block.load_state_dict({k: torch.as_tensor(v) for k, v in block_state.items()})
        self.num_updates = int(state["num_updates"])
        self.num_skipped_updates = int(state["num_skipped_updates"])
        self.num_eigh_failures = int(state["num_eigh_failures"])
        self.damping = float(state["damping"])
