"""Torch learner of KFCPO: one natural-gradient policy step per minibatch.

The step, numbered as in docs/algorithm.md (and marked so in ``_kfcpo_step``):

1. critics: Adam on the reward and cost value losses (one step per minibatch, or per
   ``critic_minibatch_size`` slice of it);
2. curvature and 3. two gradients: one policy forward and ONE backward give g_r (reward
   surrogate ascent), g_c (cost surrogate descent) and the per-sample Fisher statistics
   (score of the batch's actions, importance-weighted to the current policy); the K-FAC
   factors are folded (and decomposed on the preconditioner's schedule) and the natural
   directions n_r = F^-1 g_r, n_c = F^-1 g_c come with their 2x2 Fisher Gram matrix;
4. margin weights (w_r, w_c) from Jc and the limit d (with ``margin_schedule="pid"``,
   (1, lambda) / (1 + lambda) with lambda a PID controller's output on the margin);
5. projection of the harmful direction when <n_r, n_c>_F < 0, blend d = w_r n_r' + w_c n_c';
6. trust region: a = min(max_step_size, sqrt(2 trust_region_kl / d'Fd)) (budget divided by
   the measured real/quadratic KL ratio with ``adaptive_trust_region``); with
   ``step_rule="span"``, 5-6 are one exact solve in span(n_r, n_c);
7. rollback: if KL(behaviour || new) > target_kl, restore the snapshot and retry at half
   the step (``rollback_backtracks`` times); if no retry fits, keep the snapshot and freeze
   the policy for the rest of the iteration (critics keep training). The KL is measured on
   the minibatch, or with ``rollback_kl_rows="held_out"`` on the iteration's rows seen so
   far outside it (:class:`IterationRows`).

With several learners the module is not wrapped in DDP: gradients, Kronecker factors and
the KL are averaged with explicit all-reduces, so every learner takes the same step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from ray.rllib.algorithms.ppo.ppo import LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY, Learner
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import explained_variance
from torch import nn

from rllib_kfcpo.algorithms.kfcpo import metrics as M
from rllib_kfcpo.algorithms.kfcpo.manipulation import (
    blend,
    categorical_fisher_gram,
    combine_directions,
    cost_margin,
    cost_requirement,
    euclidean_inner,
    gaussian_fisher_gram,
    gram_matrix,
    margin_weights,
    multiplier_weights,
    resize_diagonal_block,
    solve_span_trust_region,
    trust_region_step_size,
)
from rllib_kfcpo.distributed import all_reduce_mean_
from rllib_kfcpo.kfac import KFACPreconditioner
from rllib_kfcpo.safe.columns import (
    COST_ADVANTAGES,
    COST_VALUE_TARGETS,
    COST_VF_EXPLAINED_VAR_KEY,
    COST_VF_LOSS_KEY,
    EPISODE_COST_FOR_LEARNER,
    ROW_INDEX,
)
from rllib_kfcpo.safe.learner import NonSGDPolicyLearner, SafeTorchLearner, masked_mean
from rllib_kfcpo.safe.pid_lagrange import PIDLagrangian

#: Exact Fisher of a Gaussian's log-std, per dimension: E[(z^2 - 1)^2] = 2.
LOG_STD_FISHER = 2.0
#: ``adaptive_trust_region``: weight of the newest kept step in the running (geometric)
#: mean of real KL / quadratic KL, and the range that ratio is clamped to.
KL_RATIO_EMA = 0.2
KL_RATIO_RANGE = (0.25, 20.0)
#: ``margin_integral_gain``: the integral term's range, in margin units (1.0 = the limit).
MARGIN_INTEGRAL_RANGE = 1.0


def exact_fisher_gram(module: Any, params: Sequence[nn.Parameter],
                      directions: Sequence[Sequence[torch.Tensor]], obs: torch.Tensor,
                      mask: torch.Tensor | None) -> torch.Tensor:
    """The exact Fisher Gram of ``directions`` for the module's policy: Gaussian
    (:func:`gaussian_fisher_gram`) or categorical (:func:`categorical_fisher_gram`)."""
    if module.log_std is None:
        return categorical_fisher_gram(module.pi, params, directions, obs, mask)
    return gaussian_fisher_gram(module.pi, module.log_std, params, directions, obs, mask)


def unclipped_rows(ratio: torch.Tensor, advantages: torch.Tensor,
                   clip: float) -> torch.Tensor:
    """Rows (per objective) on which PPO's clipped surrogate ``min(r A, clip(r) A)`` still
    has the gradient of ``r A``: False where the ratio has left ``[1 - clip, 1 + clip]``
    on the side the advantage favours (``A > 0, r > 1 + clip`` or ``A < 0, r < 1 - clip``).

    Args:
        ratio: ``(n,)`` importance ratios ``pi / pi_old``.
        advantages: ``(k, n)`` advantages of the k objectives that are ascended.
        clip: PPO's clip parameter eps.
    """
    return ~(((advantages > 0) & (ratio > 1.0 + clip))
             | ((advantages < 0) & (ratio < 1.0 - clip)))


class IterationRows:
    """The rows of this iteration's train batch a learner has seen so far, by row index.

    ``rollback_kl_rows="held_out"``: a minibatch step fits its own rows, so the KL on them
    overstates how far the policy moved; the rows of the iteration's other minibatches
    (their observations and behaviour-policy outputs, kept as they pass) measure it
    without that bias.
    """

    def __init__(self) -> None:
        self.columns: dict[str, torch.Tensor] = {}
        self.seen = torch.zeros(0, dtype=torch.bool)

    def add(self, index: torch.Tensor, columns: dict[str, torch.Tensor]) -> None:
        """Keeps ``columns`` (rows aligned with ``index``) at their row indices."""
        size = int(index.max()) + 1 if index.numel() else 0
        if size > self.seen.numel():  # grow every buffer to hold the new indices
            grown = torch.zeros(size, dtype=torch.bool, device=index.device)
            grown[:self.seen.numel()] = self.seen
            self.seen = grown
            for key, value in columns.items():
                old = self.columns.get(key)
                new = value.new_zeros((size, *value.shape[1:]))
                if old is not None:
                    new[:old.shape[0]] = old
                self.columns[key] = new
        for key, value in columns.items():
            self.columns[key][index] = value.detach()
        self.seen[index] = True

    def held_out(self, index: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The kept rows whose indices are not in ``index`` (None when there are none)."""
        rows = self.seen.clone()
        rows[index[index < rows.numel()]] = False
        if not bool(rows.any()):
            return None
        return {key: value[rows] for key, value in self.columns.items()}


def _distributed() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


class KFCPOTorchLearner(NonSGDPolicyLearner):
    """KFCPO's learner (see module docstring).

    Its backward is not a ``loss.backward()`` (it differentiates w.r.t. the layer outputs
    for several losses at once), which DDP cannot average: no DDP, explicit all-reduces
    (:class:`~rllib_kfcpo.rllib_seam.CustomStepLearnerMixin`).
    """

    # --- Set-up -------------------------------------------------------------------------
    @override(SafeTorchLearner)
    def build(self) -> None:
        super().build()
        self.kfac: dict[str, KFACPreconditioner] = {}
        self.policy_frozen = False
        self.margin_cost = math.nan  # Jc as the margin weights see it (see margin_cost_ema)
        self.margin_integral = 0.0  # sum of gain * (margin_offset - m), clamped
        self.kl_ratio = 1.0  # real / quadratic KL of kept steps (adaptive_trust_region)
        # margin_schedule="pid": lambda from OmniSafe CPPOPID's controller on the margin's Jc.
        kp, ki, kd = self.config.margin_pid_gains
        cap = self.config.margin_multiplier_max
        init = self.config.margin_pid_init
        self.margin_pid = PIDLagrangian(kp=kp, ki=ki, kd=kd,
                                        **({} if init is None else {"init": init}),
                                        multiplier_max=math.inf if cap is None else cap,
                                        ki_unwind=self.config.margin_pid_unwind_gain)
        # The previous minibatch's (g_r, g_c, n_r, n_c), flattened: the agreement metrics.
        self.previous_directions: dict[str, list[torch.Tensor]] = {}
        # gradient_averaging: this iteration's sum of minibatch g_r or g_c and their count.
        self.gradient_sums: dict[tuple[str, str], tuple[list[torch.Tensor], int]] = {}
        # rollback_kl_rows="held_out": per module, this iteration's rows seen so far.
        self.iteration_rows: dict[str, IterationRows] = {}
        # direction_momentum: per module, the EMAs (m_r, m_c) of the natural directions.
        self.direction_momentum: dict[str, list[list[torch.Tensor]]] = {}
        for module_id in self.module.keys():
            module = self.module[module_id].unwrapped()
            cfg = self.config.get_config_for_module(module_id)
            # A Gaussian's log-std is one exact diagonal block; a categorical policy has
            # only the logits network (its softmax Fisher enters through the score).
            diagonal = [] if module.log_std is None else [(module.log_std, LOG_STD_FISHER)]
            self.kfac[module_id] = KFACPreconditioner(
                [m for m in module.pi.modules() if isinstance(m, nn.Linear)],
                diagonal,
                damping=cfg.kfac_damping,
                decay=cfg.kfac_decay,
                burn_in=cfg.kfac_burn_in,
                inv_update_steps=cfg.kfac_inv_update_steps,
                relative_damping=cfg.kfac_damping_relative,
            )

    @override(SafeTorchLearner)
    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        self.policy_frozen = False
        self.previous_directions = {}
        self.gradient_sums = {}
        self.iteration_rows = {}
        # The margin's cost: an EMA over iterations of Jc (margin_cost_ema = weight of the
        # newest value; 1.0 = this iteration's Jc only). No new Jc: unchanged.
        jc = float(timesteps.get(EPISODE_COST_FOR_LEARNER, math.nan))
        if math.isfinite(jc):
            beta = self.config.margin_cost_ema
            self.margin_cost = (jc if not math.isfinite(self.margin_cost)
                                else (1.0 - beta) * self.margin_cost + beta * jc)
            # Integral term (margin_integral_gain): a lasting shortfall of the margin below
            # margin_offset (the margin the weights balance at) accumulates and lowers the
            # margin the weights see; clamped so it cannot wind up without bound.
            gain = self.config.margin_integral_gain
            if gain > 0.0:
                excess = (self.config.margin_offset
                          - cost_margin(self.margin_cost, self.config.cost_limit))
                self.margin_integral = min(max(self.margin_integral + gain * excess,
                                               -MARGIN_INTEGRAL_RANGE), MARGIN_INTEGRAL_RANGE)
            if self.config.margin_schedule == "pid":  # set-point: the margin at the offset
                self.margin_pid.update(
                    self.margin_cost, self.config.cost_limit * (1.0 - self.config.margin_offset))
        for module_id in self.module.keys():
            self.metrics.log_value((module_id, M.MARGIN_COST), self.margin_cost, window=1)
            self.metrics.log_value((module_id, M.MARGIN_INTEGRAL), self.margin_integral,
                                   window=1)
            self.metrics.log_value((module_id, M.MARGIN_MULTIPLIER), self.margin_pid.value,
                                   window=1)

    # --- The update ---------------------------------------------------------------------
    @override(NonSGDPolicyLearner)
    def custom_update(self, batch: dict[str, Any], **kwargs) -> tuple[Any, Any, Any]:
        losses = {mid: self._kfcpo_step(mid, mb) for mid, mb in batch.items()}
        return {}, losses, {}

    def _kfcpo_step(self, module_id: str, batch: dict[str, Any]) -> torch.Tensor:
        """One KFCPO step on one minibatch; the step numbers are docs/algorithm.md's."""
        cfg = self.config.get_config_for_module(module_id)
        module = self.module[module_id].unwrapped()
        log: dict[str, float] = {}

        # Step 1: critics.
        critic_loss = self._critic_step(module_id, module, batch, cfg)
        if self.policy_frozen:
            self.metrics.log_value((module_id, M.FROZEN_MINIBATCHES), 1, reduce="sum")
            return critic_loss

        # Steps 2 and 3: Fisher statistics, g_r and g_c from one forward and one backward;
        # K-FAC factors folded (decomposed on the preconditioner's schedule); naturals.
        kfac = self.kfac[module_id]
        obs = module.flat_obs(batch)
        g_reward, g_cost, dist, surrogate = self._policy_gradients(module_id, module, kfac,
                                                                   obs, batch, cfg)
        started = time.perf_counter()
        raw = [g_reward, g_cost]  # this minibatch's own gradients, for the agreement metrics
        if cfg.gradient_averaging in ("cost", "both"):
            g_cost = self._iteration_mean((module_id, "cost"), g_cost)
        if cfg.gradient_averaging == "both":
            g_reward = self._iteration_mean((module_id, "reward"), g_reward)
        if cfg.use_kfac:
            kfac.update_factors()
            (n_reward, n_cost), gram = kfac.natural_directions([g_reward, g_cost])
        else:
            n_reward, n_cost = g_reward, g_cost
            gram = gram_matrix([g_reward, g_cost], euclidean_inner)
        log.update(self._agreement(module_id, [*raw, n_reward, n_cost]))
        if cfg.direction_momentum > 0.0:  # from here on, n_r and n_c are their EMAs
            n_reward, n_cost = self._momentum(module_id, [n_reward, n_cost],
                                              cfg.direction_momentum)
            gram = gram_matrix([n_reward, n_cost],
                               kfac.inner if cfg.use_kfac else euclidean_inner)
        if cfg.step_metric == "exact":  # the exact Fisher restricted to span(n_r, n_c)
            gram = exact_fisher_gram(module, kfac.params, [n_reward, n_cost], obs,
                                     batch.get(Columns.LOSS_MASK))
            all_reduce_mean_([gram])

        # Step 4: margin-aware weights from Jc and the limit (less the integral term), or
        # with margin_schedule="pid" from the PID multiplier on the margin.
        jc = self.margin_cost if math.isfinite(self.margin_cost) else 0.0
        if cfg.margin_schedule == "pid":
            w_reward, w_cost = multiplier_weights(self.margin_pid.value)
        else:
            w_reward, w_cost = margin_weights(
                cost_margin(jc, cfg.cost_limit) - self.margin_integral,
                schedule=cfg.margin_schedule,
                temperature=cfg.margin_temperature, offset=cfg.margin_offset,
            )

        # Steps 5 and 6: projection and blend, then the trust-region size; or, with
        # step_rule="span", the exact trust-region step in span(n_r, n_c).
        coeffs, info = combine_directions(gram, w_reward, w_cost, projection=cfg.projection,
                                          normalize=cfg.normalize_directions)
        kl_budget = cfg.trust_region_kl / (self.kl_ratio if cfg.adaptive_trust_region else 1.0)
        if cfg.step_rule == "span":
            kappa = cost_requirement(w_cost)
            coeffs, span = solve_span_trust_region(
                gram,
                (float(euclidean_inner(g_reward, n_reward)),
                 float(euclidean_inner(g_reward, n_cost))),
                (float(euclidean_inner(g_cost, n_reward)),
                 float(euclidean_inner(g_cost, n_cost))),
                radius=math.sqrt(2.0 * kl_budget), kappa=kappa,
            )
            info["quad"] = span["quad"]
            log.update({M.COST_REQUIREMENT: kappa, M.CONSTRAINT_ACTIVE: span["active"]})
            step = 1.0 if span["quad"] > 0.0 else 0.0  # the radius already sizes the step
        else:
            step = trust_region_step_size(info["quad"], max_kl=kl_budget,
                                          max_step=cfg.max_step_size)
        direction = blend(coeffs, n_reward, n_cost)
        if cfg.log_std_trust_region_kl is not None and module.log_std is not None:
            # The log-std's own trust region: its share of the joint step is tiny (its
            # gradient is weak next to its Fisher), so the exploration noise never falls.
            # Sized to the bound (no Newton cap): a step of fixed length in the direction
            # of its gradient, as Adam moves PPO's log-std.
            index = next(i for i, p in enumerate(kfac.params) if p is module.log_std)
            direction = resize_diagonal_block(direction, index, LOG_STD_FISHER, step,
                                              max_kl=cfg.log_std_trust_region_kl,
                                              max_step=math.inf)
        log[M.KFAC_SECONDS] = time.perf_counter() - started
        if step <= 0.0 or not all(bool(torch.isfinite(d).all()) for d in direction):
            self.metrics.log_value((module_id, M.SKIPPED_STEPS), 1, reduce="sum")
            return critic_loss

        # Step 7: the step, undone and retried at half the size while the real KL to the
        # behaviour policy exceeds target_kl; the policy freezes when no retry fits. The
        # KL is measured on the minibatch or (rollback_kl_rows="held_out") on the rows of
        # the iteration outside it.
        check = {Columns.OBS: obs}
        for key in (Columns.ACTION_DIST_INPUTS, Columns.LOSS_MASK, Columns.ACTIONS,
                    Columns.ACTION_LOGP, Postprocessing.ADVANTAGES, COST_ADVANTAGES):
            if key in batch:
                check[key] = batch[key]
        check_before, objective = dist, None
        if cfg.rollback_kl_rows == "held_out":
            held_out = self._held_out_rows(module_id, module, batch, check)
            log[M.HELD_OUT_CHECKS] = float(held_out is not None)
            if held_out is not None:
                check, check_before = held_out
                if cfg.held_out_improvement:
                    objective = (w_reward, w_cost)
        kl, step, backtracks, step_kl, gain = self._step_with_rollback(
            module, kfac.params, direction, step, check, cfg, check_before,
            objective=objective, check_gain=cfg.held_out_improvement)
        rejected = int(step == 0.0 and not self.policy_frozen)
        if objective is not None:  # the step was checked on held-out rows
            log[M.HELD_OUT_GAIN] = gain
        if cfg.rollback_kl_rows == "held_out" and step > 0.0:  # the step's KL on its rows
            with torch.no_grad():
                after = module.get_train_action_dist_cls().from_logits(
                    module.action_dist_inputs(obs))
                own = torch.stack([masked_mean(dist.kl(after), batch)])
            all_reduce_mean_([own])
            log[M.STEP_KL_OWN_ROWS] = float(own[0])
        self._update_kl_ratio(step_kl, 0.5 * step**2 * info["quad"])

        with torch.no_grad():
            behaviour = module.get_train_action_dist_cls().from_logits(
                batch[Columns.ACTION_DIST_INPUTS])
            log[M.KL_BEFORE_STEP] = float(masked_mean(behaviour.kl(dist), batch))
            log[ENTROPY_KEY] = float(masked_mean(dist.entropy(), batch))
            if module.log_std is not None:
                log[M.LOG_STD_MEAN] = float(module.log_std.mean())
        log.update({
            M.COS_BEFORE: info["cos_before"], M.COS_AFTER: info["cos_after"],
            M.CONFLICT: info["conflict"], M.WEIGHT_REWARD: w_reward, M.WEIGHT_COST: w_cost,
            M.DIRECTION_QUAD: info["quad"], M.STEP_SIZE: step,
            M.QUAD_KL: 0.5 * step**2 * info["quad"], M.KL_AFTER_STEP: kl,
            M.STEP_KL: step_kl, M.KL_RATIO: self.kl_ratio,
            POLICY_LOSS_KEY: -float(surrogate),
        })
        for key, value in log.items():
            self.metrics.log_value((module_id, key), value, reduce="mean")
        rolled_back = int(self.policy_frozen)
        counts = [(M.BACKTRACKS, backtracks), (M.ROLLBACKS, rolled_back),
                  (M.POLICY_STEPS, 1 - rolled_back - rejected)]
        if cfg.held_out_improvement:
            counts.append((M.HELD_OUT_REJECTIONS, rejected))
        for key, count in counts:
            self.metrics.log_value((module_id, key), count, reduce="sum")
        return critic_loss - surrogate

    def _held_out_rows(self, module_id: str, module: Any, batch: dict[str, Any],
                       minibatch: dict[str, torch.Tensor]) -> tuple[dict[str, Any], Any] | None:
        """``rollback_kl_rows="held_out"``: keeps this minibatch's ``minibatch`` rows for
        the iteration and returns the rows seen before outside it with the current policy
        on them, or None while there are none (the step is then checked on its own rows;
        the all-reduced KL makes every learner decide alike either way)."""
        index = batch[ROW_INDEX]
        rows = self.iteration_rows.setdefault(module_id, IterationRows())
        held_out = rows.held_out(index)
        rows.add(index, minibatch)
        if held_out is None:
            return None
        with torch.no_grad():
            before = module.get_train_action_dist_cls().from_logits(
                module.action_dist_inputs(held_out[Columns.OBS]))
        return held_out, before

    def _agreement(self, module_id: str,
                   directions: Sequence[Sequence[torch.Tensor]]) -> dict[str, float]:
        """Cosines of (g_r, g_c, n_r, n_c) with the previous minibatch's of this iteration
        (none for an iteration's first minibatch): near 1, a direction is signal; near 0,
        minibatch noise."""
        flat = [torch.cat([t.detach().reshape(-1) for t in d]) for d in directions]
        previous = self.previous_directions.get(module_id)
        self.previous_directions[module_id] = flat
        if previous is None:
            return {}
        keys = (M.REWARD_GRAD_AGREEMENT, M.COST_GRAD_AGREEMENT, M.REWARD_NATURAL_AGREEMENT,
                M.COST_NATURAL_AGREEMENT)
        return {key: float(torch.nn.functional.cosine_similarity(now, before, dim=0))
                for key, now, before in zip(keys, flat, previous, strict=True)}

    def _momentum(self, module_id: str, naturals: list[list[torch.Tensor]],
                  beta: float) -> list[list[torch.Tensor]]:
        """``direction_momentum``: ``m <- beta m + (1 - beta) n`` for (n_r, n_c); the first
        call starts the EMAs at the naturals themselves."""
        previous = self.direction_momentum.get(module_id)
        if previous is None:
            updated = [[t.detach().clone() for t in n] for n in naturals]
        else:
            updated = [[beta * m + (1.0 - beta) * t.detach() for m, t in zip(ms, n, strict=True)]
                       for ms, n in zip(previous, naturals, strict=True)]
        self.direction_momentum[module_id] = updated
        return updated

    def _iteration_mean(self, key: tuple[str, str],
                        gradient: list[torch.Tensor]) -> list[torch.Tensor]:
        """``gradient_averaging``: the mean of this iteration's minibatch gradients under
        ``key`` ((module id, 'reward' or 'cost')) so far, this minibatch's included."""
        sums, count = self.gradient_sums.get(key, ([torch.zeros_like(t) for t in gradient], 0))
        for total, new in zip(sums, gradient, strict=True):
            total.add_(new.detach())
        self.gradient_sums[key] = (sums, count + 1)
        return [t / (count + 1) for t in sums]

    def _update_kl_ratio(self, step_kl: float, quad_kl: float) -> None:
        """Running geometric mean of real / quadratic KL of kept steps (clamped)."""
        if quad_kl > 0.0 and step_kl > 0.0:
            log_ratio = ((1.0 - KL_RATIO_EMA) * math.log(self.kl_ratio)
                         + KL_RATIO_EMA * math.log(step_kl / quad_kl))
            self.kl_ratio = min(max(math.exp(log_ratio), KL_RATIO_RANGE[0]),
                                KL_RATIO_RANGE[1])

    def _policy_gradients(self, module_id: str, module: Any, kfac: KFACPreconditioner,
                          obs: torch.Tensor, batch: dict[str, Any],
                          cfg: Any) -> tuple[Any, ...]:
        """g_r, g_c and (with K-FAC) the Fisher statistics from ONE forward and ONE backward.

        Both surrogates ``mean r A`` are sums of per-row terms whose gradient w.r.t. the
        policy output of row i is ``(r_i A_i / n) * score_i``, ``score_i = d log pi(a_i|s_i)``:
        one backward of the score through the network serves both gradients, and its
        per-sample layer-output gradients are the Fisher's ``g`` for the batch's actions.
        Those actions come from the behaviour policy, so ``G`` takes importance weights
        ``r_i = pi(a_i|s_i) / pi_old(a_i|s_i)`` (docs/algorithm.md, step 2).

        With ``surrogate_clip`` (eps), rows PPO's clipped surrogate would clip (see
        :func:`unclipped_rows`) get weight 0 in that surrogate's gradient; the Fisher keeps
        every row.

        Returns:
            ``(g_reward, g_cost, dist, reward_surrogate)`` with ``dist`` the current policy
            on the minibatch (detached) and the surrogate as a detached 0-d tensor.
        """
        with kfac.record():
            outputs = module.action_dist_inputs(obs)
        leaf = outputs.detach().requires_grad_(True)
        dist = module.get_train_action_dist_cls().from_logits(leaf)
        logp = dist.logp(batch[Columns.ACTIONS])
        (score,) = torch.autograd.grad(logp.sum(), leaf)
        with torch.no_grad():
            ratio = torch.exp(logp - batch[Columns.ACTION_LOGP])
            mask = batch.get(Columns.LOSS_MASK)
            real = torch.ones_like(ratio) if mask is None else mask.to(ratio.dtype)
            rows = real.sum().clamp_min(1.0)
            scale = real / rows
            # The objectives ascended: r A_r (reward) and r (-A_c) (cost).
            advantages = torch.stack([batch[Postprocessing.ADVANTAGES],
                                      -batch[COST_ADVANTAGES]])
            weights = ratio * advantages * scale
            if cfg.surrogate_clip is None:
                surrogate = weights[0].sum()
            else:
                keep = unclipped_rows(ratio, advantages, cfg.surrogate_clip)
                weights = weights * keep
                clipped = ((~keep) * real).sum(dim=1) / rows
                self.metrics.log_value((module_id, M.REWARD_CLIPPED_SHARE),
                                       float(clipped[0]), reduce="mean")
                self.metrics.log_value((module_id, M.COST_CLIPPED_SHARE),
                                       float(clipped[1]), reduce="mean")
                # PPO's clipped surrogate: min(r A, clip(r, 1 - eps, 1 + eps) A).
                bounded = ratio.clamp(1.0 - cfg.surrogate_clip, 1.0 + cfg.surrogate_clip)
                surrogate = (torch.minimum(ratio * advantages[0], bounded * advantages[0])
                             * scale).sum()
        g_reward, g_cost = kfac.score_gradients(
            outputs, score, weights,
            fisher_rows=real.bool() if cfg.use_kfac else None, fisher_weights=ratio)
        all_reduce_mean_(g_reward + g_cost)
        return g_reward, g_cost, dist, surrogate

    def _critic_step(self, module_id: str, module: Any, batch: dict[str, Any],
                     cfg: Any) -> torch.Tensor:
        """Adam on both critics: one step on the minibatch, or with ``critic_minibatch_size``
        one step per slice of that many rows (every learner holds the same number of rows,
        so all take the same number of all-reduced steps)."""
        rows = int(batch[Columns.OBS].shape[0])
        size = min(cfg.critic_minibatch_size or rows, rows)
        keys = (Columns.OBS, Postprocessing.VALUE_TARGETS, COST_VALUE_TARGETS, Columns.LOSS_MASK)
        with torch.no_grad():
            targets, cost_targets = batch[Postprocessing.VALUE_TARGETS], batch[COST_VALUE_TARGETS]
            before = (module.compute_values(batch), module.compute_cost_values(batch))
        for start in range(0, rows - size + 1, size):
            self.critic_step(module_id, module,
                             {k: batch[k][start:start + size] for k in keys if k in batch}, cfg)
        # Losses and explained variances of the minibatch before this update's steps.
        values = {
            VF_LOSS_KEY: masked_mean((before[0] - targets).pow(2), batch).item(),
            COST_VF_LOSS_KEY: masked_mean((before[1] - cost_targets).pow(2), batch).item(),
            LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: float(explained_variance(targets, before[0])),
            COST_VF_EXPLAINED_VAR_KEY: float(explained_variance(cost_targets, before[1])),
        }
        for key, value in values.items():
            self.metrics.log_value((module_id, key), value, reduce="mean")
        return (cfg.vf_loss_coeff * values[VF_LOSS_KEY]
                + cfg.cost_vf_loss_coeff * values[COST_VF_LOSS_KEY]) * torch.ones(())

    def _step_with_rollback(self, module: Any, params: Sequence[nn.Parameter],
                            direction: Sequence[torch.Tensor], step: float,
                            rows: dict[str, torch.Tensor], cfg: Any, before: Any, *,
                            objective: tuple[float, float] | None = None,
                            check_gain: bool = False,
                            ) -> tuple[float, float, int, float, float]:
        """Takes the step; if the real KL leaves ``target_kl``, undoes it bit-for-bit.

        The KL is measured on ``rows`` (observations, behaviour-policy outputs and loss
        mask: the minibatch's or held-out rows), ``before`` being the policy on them
        before the step.

        After an undo the step is retried at half the size, up to ``rollback_backtracks``
        times; when no retry fits, the parameters stay at the snapshot and the policy is
        frozen for the rest of the iteration. Every decision uses the all-reduced KL, so
        all learners decide alike.

        ``check_gain`` (``held_out_improvement``; every learner passes the same): a step
        that fits the KL is also undone, without freezing and without retries, when its
        gain of ``w_r L_r - w_c L_c`` on ``rows`` (``objective = (w_r, w_c)``; L the
        importance-weighted surrogates against the behaviour policy) is not positive. A
        learner without held-out rows passes ``objective=None``; the gain then decides
        only if no learner did (all-reduced flag).

        Returns:
            ``(kl, step actually kept (0.0 when frozen or undone), number of halvings,
            step_kl, gain)`` with ``step_kl`` the real KL(``before`` || after) of the kept
            step (0.0 when none is kept) and ``gain`` the all-reduced surrogate gain of the
            last try (0.0 without ``check_gain``).
        """
        snapshot = [p.detach().clone() for p in params]

        def restore() -> None:  # back to the snapshot, bit-for-bit
            for p, saved in zip(params, snapshot, strict=True):
                p.copy_(saved)

        dist_cls = module.get_train_action_dist_cls()
        behaviour = dist_cls.from_logits(rows[Columns.ACTION_DIST_INPUTS])
        attempts = 1 + (cfg.rollback_backtracks if cfg.kl_rollback else 0)
        with torch.no_grad():
            if check_gain and objective is not None:
                advantage = (objective[0] * rows[Postprocessing.ADVANTAGES]
                             - objective[1] * rows[COST_ADVANTAGES])

                def surrogate(dist: Any) -> torch.Tensor:
                    ratio = torch.exp(dist.logp(rows[Columns.ACTIONS])
                                      - rows[Columns.ACTION_LOGP])
                    return masked_mean(ratio * advantage, rows)

                start = surrogate(before)
            for attempt in range(attempts):
                if attempt:  # undo the previous try, then try half of it
                    restore()
                    step *= 0.5
                for p, d in zip(params, direction, strict=True):
                    p.add_(d, alpha=step)
                current = dist_cls.from_logits(module.action_dist_inputs(rows[Columns.OBS]))
                values = [masked_mean(behaviour.kl(current), rows),
                          masked_mean(before.kl(current), rows)]
                if check_gain:  # (gain, flag): the flag is 1 only if every learner checks
                    values += ([surrogate(current) - start, torch.ones(())]
                               if objective is not None else [torch.zeros(())] * 2)
                values = torch.stack([v.to(values[0].dtype) for v in values])
                all_reduce_mean_([values])
                kl_value, step_kl = float(values[0]), float(values[1])
                gain = float(values[2]) if check_gain else 0.0
                if not cfg.kl_rollback or kl_value <= cfg.target_kl:
                    if check_gain and float(values[3]) == 1.0 and gain <= 0.0:
                        restore()
                        return kl_value, 0.0, attempt, 0.0, gain
                    return kl_value, step, attempt, step_kl, gain
            restore()
            self.policy_frozen = True
        return kl_value, 0.0, attempts - 1, 0.0, gain

    @override(SafeTorchLearner)
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id, kfac in self.kfac.items():  # once per update, not per minibatch
            if self.config.get_config_for_module(module_id).use_kfac:
                for key, value in kfac.diagnostics().items():
                    self.metrics.log_value((module_id, f"kfac_{key}"), float(value),
                                           window=1)

    # --- State --------------------------------------------------------------------------
    @override(SafeTorchLearner)
    def get_safe_state(self) -> dict[str, Any]:
        return {
            **super().get_safe_state(),
            "kfac": {mid: k.state_dict() for mid, k in self.kfac.items()},
            "margin_cost": self.margin_cost,
            "margin_integral": self.margin_integral,
            "kl_ratio": self.kl_ratio,
            "margin_pid": self.margin_pid.state_dict(),
            "direction_momentum": {mid: [[t.detach().cpu() for t in d] for d in pair]
                                   for mid, pair in self.direction_momentum.items()},
        }

    @override(SafeTorchLearner)
    def set_safe_state(self, state: dict[str, Any]) -> None:
        super().set_safe_state(state)
        self.margin_cost = float(state.get("margin_cost", self.episode_cost))
        self.kl_ratio = float(state.get("kl_ratio", 1.0))
        self.margin_integral = float(state.get("margin_integral", 0.0))
        if "margin_pid" in state:
            self.margin_pid.load_state_dict(state["margin_pid"])
        self.direction_momentum = {
            mid: [[torch.as_tensor(t, device=p.device, dtype=p.dtype)
                   for t, p in zip(d, self.kfac[mid].params, strict=True)] for d in pair]
            for mid, pair in state.get("direction_momentum", {}).items() if mid in self.kfac}
        for mid, kfac_state in state.get("kfac", {}).items():
            if mid in self.kfac:
                self.kfac[mid].load_state_dict(kfac_state)

    @override(Learner)
    def compute_loss_for_module(self, **kwargs) -> torch.Tensor:
        raise NotImplementedError("KFCPO updates in _update(); it has no single loss.")
