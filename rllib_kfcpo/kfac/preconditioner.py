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

Several losses at once (what KFCPO uses: one forward and ONE backward for the Fisher
statistics, the reward gradient and the cost gradient)::

    with kfac.record():                       # inputs and outputs of every layer
        out = policy_outputs(obs)             # (rows, features), rows independent
    leaf = out.detach().requires_grad_()
    logp = dist_from(leaf).log_prob(actions)  # actions of the (behaviour) policy
    score, = torch.autograd.grad(logp.sum(), leaf)
    g_r, g_c = kfac.score_gradients(out, score, torch.stack([w_r, w_c]),
                                    fisher_rows=mask, fisher_weights=ratio)
    kfac.update_factors()
    (n_r, n_c), gram = kfac.natural_directions([g_r, g_c])   # gram[k, l] = n_k' F n_l

The Fisher is approximated block-diagonally: one ``A (x) G`` block per Linear layer
(``block.py``) and one exact diagonal block per extra parameter (a Gaussian's log-std; a
categorical policy has none).

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

from rllib_kfcpo.distributed import all_reduce_mean_
from rllib_kfcpo.kfac.block import DiagonalBlock, KroneckerBlock
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
            e.g. ``[(log_std, 2.0)]`` for a state-independent Gaussian log-std; none for a
            categorical policy (its softmax Fisher enters through the score of the
            logits, ``onehot(a) - p``).
        damping: added to the Kronecker eigenvalue products and to the diagonal Fisher;
            finite, > 0. Settable later (``kfac.damping = ...``).
        decay: EMA decay of the running factors after the burn-in, in (0, 1).
        burn_in: number of first updates averaged plainly (weight 1/k), integer >= 0.
        inv_update_steps: after the burn-in, :meth:`update_factors` recomputes the
            eigendecompositions on every ``inv_update_steps``-th update only (kfac-pytorch's
            ``inv_update_steps``; during the burn-in on every update), integer >= 1.
        relative_damping: False adds ``damping`` itself to every block's curvature
            (Tikhonov); True adds ``damping`` times the block's mean curvature (the mean of
            ``lg la^T`` for a Kronecker block, of ``f`` for a diagonal one), so the same
            setting regularises every layer alike whatever the scale of its factors.
    """

    def __init__(
        self,
        layers: Sequence[nn.Linear],
        diagonal: Sequence[tuple[nn.Parameter, float | torch.Tensor]] = (),
        *,
        damping: float = 1e-2,
        decay: float = 0.95,
        burn_in: int = 10,
        inv_update_steps: int = 1,
        relative_damping: bool = False,
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
        if (isinstance(inv_update_steps, bool) or not isinstance(inv_update_steps, numbers.Integral)
                or inv_update_steps < 1):
            raise ValueError(f"inv_update_steps={inv_update_steps!r} is invalid: it must be an "
                             "integer >= 1 (1: decompose on every update).")
        self.decay = float(decay)
        self.burn_in = int(burn_in)
        self.inv_update_steps = int(inv_update_steps)
        if not isinstance(relative_damping, bool):
            raise ValueError(f"relative_damping={relative_damping!r} is invalid: it must be "
                             "True or False.")
        self.relative_damping = relative_damping

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
        with self._hook_window("capture", LinearStatistics.start_capture,
                               LinearStatistics.stop_capture), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=FIRST_LAYER_HOOK_WARNING,
                                    category=UserWarning)
            yield

    @contextmanager
    def record(self) -> Iterator[None]:
        """Records every layer's input and output of ONE differentiable forward run inside,
        for :meth:`score_gradients`. Any previous, unused capture is discarded on entry."""
        with self._hook_window("record", LinearStatistics.start_recording,
                               LinearStatistics.stop_recording):
            yield

    @contextmanager
    def _hook_window(self, name: str, start: Any, stop: Any) -> Iterator[None]:
        """Every layer's hooks exist exactly inside the block (one window at a time)."""
        if self._capturing:
            raise RuntimeError(f"KFACPreconditioner.{name}() cannot be nested in capture() "
                               "or record().")
        self._capturing = True
        for stats in self.stats:
            start(stats)
        try:
            yield
        finally:
            for stats in self.stats:
                stop(stats)
            self._capturing = False

    def score_gradients(
        self,
        outputs: torch.Tensor,
        score: torch.Tensor,
        weights: torch.Tensor,
        *,
        fisher_rows: torch.Tensor | None = None,
        fisher_weights: torch.Tensor | None = None,
    ) -> list[list[torch.Tensor]]:
        """Gradients of K row-weighted losses from ONE backward through the layers.

        The losses are those whose gradient w.r.t. row ``i`` of ``outputs`` is
        ``weights[k, i] * score[i]``, e.g. ``sum_i w_ki log pi(a_i|s_i)`` with
        ``score[i] = d log pi(a_i|s_i) / d outputs[i]`` (a surrogate ``mean r A`` has
        ``w = r A / n``). If the network maps rows independently (an MLP: no batch
        statistics, no mixing of rows), the gradient w.r.t. a layer output ``z`` of such a
        loss is ``weights[k, i] * h[i]`` with ``h = d (sum_i score[i] . outputs[i]) / dz``:
        one backward of ``score`` gives ``h`` for every layer, and each loss's Linear
        gradients are ``(w_k h)^T a`` (:meth:`LinearStatistics.weight_gradients`). Diagonal
        parameters (a log-std) take one small backward per loss, through their own
        subgraph only.

        Fisher statistics: with ``fisher_rows`` (a boolean row mask) the layer statistics
        for the next :meth:`update_factors` are set from the selected rows: ``A = mean a a^T``
        and ``G = sum w_i h_i h_i^T / sum w_i`` with ``w = fisher_weights`` (default 1).
        When ``score`` is of actions drawn from the current policy this is the true
        Fisher; for actions of a behaviour policy ``b``, ``fisher_weights = pi/b``
        (importance weights) make ``G`` an estimate of the same expectation.

        Args:
            outputs: ``(rows, features)`` output of the forward recorded with
                :meth:`record`, whose layers saw the same ``rows``.
            score: ``(rows, features)`` per-row cotangent, detached.
            weights: ``(K, rows)`` per-loss row weights.
            fisher_rows: optional ``(rows,)`` bool mask of rows that enter the factors.
            fisher_weights: optional ``(rows,)`` non-negative weights of ``G``'s rows.

        Returns:
            K gradients, each aligned with :attr:`params`.
        """
        if outputs.dim() != 2 or score.shape != outputs.shape:
            raise ValueError(f"outputs {tuple(outputs.shape)} and score {tuple(score.shape)} "
                             "must be the same (rows, features) shape.")
        rows = outputs.shape[0]
        if weights.dim() != 2 or weights.shape[1] != rows:
            raise ValueError(f"weights must be (K, {rows}), got {tuple(weights.shape)}.")
        recorded = [stats.recorded for stats in self.stats]
        for stats, (a, _) in zip(self.stats, recorded, strict=True):
            if a.shape[0] != rows:
                raise RuntimeError(f"{stats.layer} saw {a.shape[0]} rows, the outputs have "
                                   f"{rows}: record exactly one forward of these outputs.")
        diagonal = [p for p, _ in self.diagonal]
        hs = torch.autograd.grad(outputs, [z for _, z in recorded], grad_outputs=score,
                                 retain_graph=bool(diagonal))
        grads: list[list[torch.Tensor]] = [[] for _ in range(weights.shape[0])]
        hs = [h.detach().reshape(-1, h.shape[-1]) for h in hs]
        for stats, block, h in zip(self.stats, self.blocks, hs, strict=True):
            mats = stats.weight_gradients(weights.unsqueeze(-1) * h)
            for k, mat in enumerate(mats):
                w, b = block.split(mat)
                grads[k] += [w] if b is None else [w, b]
        for k in range(weights.shape[0]):
            if not diagonal:
                break
            row_weight = weights[k].reshape(rows, *([1] * (score.dim() - 1)))
            grads[k] += list(torch.autograd.grad(
                outputs, diagonal, grad_outputs=row_weight * score, allow_unused=True,
                retain_graph=k < weights.shape[0] - 1, materialize_grads=True))
        if fisher_rows is not None:  # statistics for update_factors(); drops the graph
            self._set_fisher_statistics(recorded, hs, fisher_rows, fisher_weights)
        else:
            for stats in self.stats:
                stats.clear()
        return grads

    def _set_fisher_statistics(self, recorded: list[tuple[torch.Tensor, torch.Tensor]],
                               hs: Sequence[torch.Tensor], rows: torch.Tensor,
                               weights: torch.Tensor | None) -> None:
        rows = rows.bool()
        every = bool(rows.all())  # no padding: skip the row copies
        scale = None
        if weights is not None:
            w = weights.detach() if every else weights.detach()[rows]
            scale = (w / w.mean().clamp_min(torch.finfo(w.dtype).tiny)).sqrt().unsqueeze(1)
        for stats, (a, _), h in zip(self.stats, recorded, hs, strict=True):
            a, g = (a, h) if every else (a[rows], h[rows])
            stats.set_statistics(a, g if scale is None else g * scale)

    def natural_directions(
        self, grads: Sequence[Sequence[torch.Tensor]]
    ) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """Natural gradients of several gradients and their Fisher Gram matrix, at once.

        Returns:
            ``(naturals, gram)``: ``naturals[k]`` equals :meth:`precondition` of
            ``grads[k]``; ``gram[k, l] = <n_k, n_l>_F`` (a ``(K, K)`` tensor) in the metric
            of the decomposed factors, computed in the eigenbasis without any extra
            matrix product (equal to :meth:`inner` when the decompositions are of the
            current factors, as after every :meth:`update_factors`).
        """
        started = time.perf_counter()
        count = len(grads)
        names = ["grads"] if count == 1 else [f"grads[{k}]" for k in range(count)]
        per_block = [list(self._per_block(g, name)) for g, name in zip(grads, names, strict=True)]
        naturals: list[list[torch.Tensor]] = [[] for _ in range(count)]
        gram = torch.zeros(count, count, device=self._params[0].device,
                           dtype=self._params[0].dtype)
        for j, (block, _) in enumerate(per_block[0]):
            if isinstance(block, KroneckerBlock):
                mats = torch.stack([block.matrix(*per_block[k][j][1]) for k in range(count)])
                out, part = block.natural_gram(mats, damping=self._damping,
                                               relative=self.relative_damping)
                for k in range(count):
                    w, b = block.split(out[k])
                    naturals[k] += [w] if b is None else [w, b]
            else:
                stacked = torch.stack([per_block[k][j][1][0] for k in range(count)])
                out, part = block.natural_gram(stacked, damping=self._damping,
                                               relative=self.relative_damping)
                for k in range(count):
                    naturals[k].append(out[k])
            gram = gram + part
        self.seconds["precondition"] += time.perf_counter() - started
        return naturals, gram

    def update_factors(self, *, decompose: bool | None = None) -> bool:
        """Turns the last capture into running factors and, on the schedule, recomputes the
        decompositions.

        Batch factors of all layers are averaged across learners with one all-reduce, then
        folded (plain mean during the burn-in, EMA afterwards) and decomposed.

        Args:
            decompose: None (default) follows the schedule: decompose during the burn-in and
                then on every ``inv_update_steps``-th update. True/False forces it; False
                folds the factors but keeps the current decompositions (the preconditioner
                and :meth:`natural_directions` then use the curvature of the last
                decomposition until :meth:`decompose`).

        Returns:
            True when the update was applied; False when it was skipped because the batch
            factors were non-finite, or undone because an eigendecomposition failed (both
            counted in :meth:`diagnostics`).

        Raises:
            RuntimeError: nothing was captured since the last call.
        """
        if decompose is None:
            done = self.num_updates
            decompose = done < self.burn_in or done % self.inv_update_steps == 0
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
        snapshots = [block.snapshot() for block in self.blocks] if decompose else []
        for i, block in enumerate(self.blocks):
            block.fold(factors[2 * i], factors[2 * i + 1], weight)
        self.seconds["capture_fold"] += time.perf_counter() - started
        if decompose and not self.decompose():
            for block, snapshot in zip(self.blocks, snapshots, strict=True):
                block.restore(snapshot)
            return False
        self.num_updates = k
        return True

    def decompose(self) -> bool:
        """Recomputes every block's eigendecomposition from its current running factors.

        Returns:
            False (and the previous decompositions kept, counted as an eigh failure) when
            an eigendecomposition failed or was non-finite.
        """
        started = time.perf_counter()
        try:
            decompositions = [block.compute_decomposition() for block in self.blocks]
        except torch.linalg.LinAlgError:
            self.num_eigh_failures += 1
            return False
        finally:
            self.seconds["eigh"] += time.perf_counter() - started
        for block, decomposition in zip(self.blocks, decompositions, strict=True):
            block.set_decomposition(decomposition)
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
        naturals, _ = self.natural_directions([grads])
        return naturals[0]

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
        """Running factors and their current decompositions (copies), counters and damping
        (a restored preconditioner preconditions bit-identically, stale decompositions
        included)."""
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
