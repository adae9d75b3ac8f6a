"""Torch learner of CPO: one trust-region policy step per iteration, then the critics.

The learner receives the whole batch in one ``_update`` call (the algorithm asks for one
epoch without minibatches) and, per module (docs/algorithm.md, "CPO"):

1. gradients of the reward surrogate ``g`` and of the cost surrogate ``b`` (mean over the
   batch of ``ratio * A``), at the behaviour parameters;
2. ``x = (F + damping I)^-1 g`` and ``p = (F + damping I)^-1 b`` by ``cg_iters`` conjugate-
   gradient iterations on exact Fisher-vector products (double backward of the mean KL
   from the current policy), then ``q = x'(F + damping I)x``, ``r = g'p``, ``s = b'p``;
3. ``c = (Jc - d) / mean episode length`` and the closed-form step of
   :func:`rllib_kfcpo.algorithms.cpo.second_order.cpo_step` (recovery step when the
   linearised constraint cannot be met inside the trust region);
4. backtracking line search (fractions 1, decay, decay^2, ...): a step is kept when the real
   mean KL is <= ``target_kl``, the cost surrogate rises by at most ``max(0, -c)``, and
   (when the old policy was feasible) the reward surrogate did not fall; none kept: no
   policy change this iteration;
5. the critics: ``num_epochs`` passes of Adam over ``minibatch_size`` minibatches.

With several learners the module is not wrapped in DDP: gradients, Fisher-vector
products, surrogate values, the KL and critic gradients are averaged with explicit
all-reduces, so every learner computes the same step and keeps identical weights.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY, Learner
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from torch import nn

from rllib_kfcpo.algorithms.cpo import metrics as M
from rllib_kfcpo.algorithms.cpo.cpo import EPISODE_LEN_FOR_LEARNER
from rllib_kfcpo.algorithms.cpo.second_order import (
    FisherVectorProduct,
    conjugate_gradient,
    cpo_step,
    flat,
    flat_grad,
    step_acceptable,
    unflatten_like,
)
from rllib_kfcpo.distributed import all_reduce_mean_, is_distributed
from rllib_kfcpo.safe.columns import (
    COST_ADVANTAGES,
    COST_VALUE_TARGETS,
    COST_VF_LOSS_KEY,
    MEAN_KL_KEY,
)
from rllib_kfcpo.safe.learner import NonSGDPolicyLearner, SafeTorchLearner, masked_mean


def _mean_(tensor: torch.Tensor) -> None:
    all_reduce_mean_([tensor])


def _set_flat_(params: list[nn.Parameter], vector: torch.Tensor) -> None:
    with torch.no_grad():
        for p, v in zip(params, unflatten_like(vector, params), strict=True):
            p.copy_(v)


class CPOTorchLearner(NonSGDPolicyLearner):
    """CPO's learner (see module docstring)."""

    # --- Set-up -------------------------------------------------------------------------
    @override(SafeTorchLearner)
    def build(self) -> None:
        super().build()
        #: Mean episode length as last received from the driver (scales c per step).
        self.episode_len = math.nan

    @override(SafeTorchLearner)
    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        length = float(timesteps.get(EPISODE_LEN_FOR_LEARNER, math.nan))
        if math.isfinite(length) and length > 0:
            self.episode_len = length

    # --- The update ---------------------------------------------------------------------
    @override(NonSGDPolicyLearner)
    def custom_update(self, batch: dict[str, Any], **kwargs) -> tuple[Any, Any, Any]:
        losses = {}
        for module_id, module_batch in batch.items():
            cfg = self.config.get_config_for_module(module_id)
            module = self.module[module_id].unwrapped()
            self._policy_step(module_id, module, module_batch, cfg)
            losses[module_id] = self._train_critics(module_id, module, module_batch, cfg)
        return {}, losses, {}

    def constraint_value(self, cost_limit: float) -> float:
        """c = (Jc - d) / mean episode length (OmniSafe's per-step scale of the cost
        surrogate); -inf before any episode finished (the cost is then ignored)."""
        if not math.isfinite(self.episode_cost):
            return -math.inf
        length = self.episode_len if math.isfinite(self.episode_len) else 1.0
        return (self.episode_cost - float(cost_limit)) / max(length, 1.0)

    def _policy_step(self, module_id: str, module: Any, batch: dict[str, Any],
                     cfg: Any) -> None:
        started = time.perf_counter()
        params = module.policy_parameters()
        dist_cls = module.get_train_action_dist_cls()
        obs = module.flat_obs(batch)
        actions, logp_old = batch[Columns.ACTIONS], batch[Columns.ACTION_LOGP]

        def surrogates() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            inputs = module.action_dist_inputs(obs)
            ratio = torch.exp(dist_cls.from_logits(inputs).logp(actions) - logp_old)
            return (masked_mean(ratio * batch[Postprocessing.ADVANTAGES], batch),
                    masked_mean(ratio * batch[COST_ADVANTAGES], batch), inputs)

        # 1. g and b, averaged over learners.
        reward, cost, inputs = surrogates()
        g = flat_grad(reward, params, retain_graph=True)
        b = flat_grad(cost, params)
        before = torch.stack([reward.detach(), cost.detach()])
        all_reduce_mean_([g, b, before])
        old_inputs = inputs.detach()

        # 2. Natural directions by CG on exact Fisher-vector products.
        cg_started = time.perf_counter()
        every = cfg.fvp_sample_freq
        fvp_batch = ({Columns.LOSS_MASK: batch[Columns.LOSS_MASK][::every]}
                     if Columns.LOSS_MASK in batch else {})
        kl = masked_mean(dist_cls.from_logits(old_inputs[::every]).kl(
            dist_cls.from_logits(module.action_dist_inputs(obs[::every]))), fvp_batch)
        fvp = FisherVectorProduct(kl, params, cfg.cg_damping, reduce=_mean_)
        x = conjugate_gradient(fvp, g, cfg.cg_iters)
        p = conjugate_gradient(fvp, b, cfg.cg_iters)
        q = float(x @ fvp(x))
        r, s = float(g @ p), float(b @ p)
        del fvp
        cg_seconds = time.perf_counter() - cg_started

        # 3. The closed-form step of the subproblem.
        c = self.constraint_value(cfg.cost_limit)
        step = cpo_step(q=q, r=r, s=s, c=c, target_kl=cfg.target_kl,
                        cost_grad_sq=float(b @ b))
        direction = step.coeff_x * x + step.coeff_p * p
        if not bool(torch.isfinite(direction).all()):
            direction = torch.zeros_like(direction)

        # 4. Backtracking line search on the real KL and the surrogates.
        theta_old = flat([t.detach() for t in params]).clone()
        old_dist = dist_cls.from_logits(old_inputs)
        fraction, accepted = 1.0, 0
        after = torch.full((3,), math.nan, device=before.device)
        with torch.no_grad():
            for k in range(cfg.line_search_steps):
                _set_flat_(params, theta_old + fraction * direction)
                new_reward, new_cost, new_inputs = surrogates()
                new_kl = masked_mean(old_dist.kl(dist_cls.from_logits(new_inputs)), batch)
                after = torch.stack([new_reward, new_cost, new_kl])
                all_reduce_mean_([after])
                improvement, cost_change, kl_value = (float(v) for v in after - torch.cat(
                    [before, torch.zeros(1, dtype=before.dtype, device=before.device)]))
                if step_acceptable(case=step.case, reward_improvement=improvement,
                                   cost_change=cost_change, kl=kl_value, c=c,
                                   target_kl=cfg.target_kl):
                    accepted = k + 1
                    break
                fraction *= cfg.line_search_decay
            if not accepted:
                _set_flat_(params, theta_old)
                fraction = 0.0
            entropy = masked_mean(dist_cls.from_logits(
                module.action_dist_inputs(obs)).entropy(), batch)

        values = {
            M.OPTIM_CASE: step.case, M.LAMBDA_STAR: step.lam, M.NU_STAR: step.nu,
            M.CONSTRAINT_VALUE: c if math.isfinite(c) else math.nan, M.Q: q, M.R: r, M.S: s,
            M.ACCEPTED_AT: accepted, M.STEP_FRACTION: fraction,
            M.KL_AFTER_STEP: float(after[2]) if accepted else 0.0,
            M.REWARD_IMPROVEMENT: float(after[0] - before[0]) if accepted else 0.0,
            M.COST_CHANGE: float(after[1] - before[1]) if accepted else 0.0,
            M.CG_SECONDS: cg_seconds, M.POLICY_STEP_SECONDS: time.perf_counter() - started,
            POLICY_LOSS_KEY: -float(before[0]), ENTROPY_KEY: float(entropy),
            MEAN_KL_KEY: float(after[2]) if accepted else 0.0,
        }
        for key, value in values.items():
            self.metrics.log_value((module_id, key), float(value), window=1)

    def _train_critics(self, module_id: str, module: Any, batch: dict[str, Any],
                       cfg: Any) -> torch.Tensor:
        """``num_epochs`` passes of Adam over shuffled ``minibatch_size`` minibatches; every
        learner runs the same number of minibatches (the smallest count of any learner)."""
        n = len(batch[Columns.OBS])
        size = min(cfg.minibatch_size, n)
        count = torch.tensor([float(math.ceil(n / size))], device=batch[Columns.OBS].device)
        if is_distributed():
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
        keys = [k for k in (Columns.OBS, Postprocessing.VALUE_TARGETS, COST_VALUE_TARGETS,
                            Columns.LOSS_MASK) if k in batch]
        vf_total, cvf_total, steps = 0.0, 0.0, 0
        for _ in range(cfg.num_epochs):
            order = torch.randperm(n, device=batch[Columns.OBS].device)
            for i in range(int(count)):
                idx = order[i * size:(i + 1) * size]
                vf_loss, cvf_loss = self.critic_step(module_id, module,
                                                     {k: batch[k][idx] for k in keys}, cfg)
                vf_total += vf_loss.item()
                cvf_total += cvf_loss.item()
                steps += 1
        steps = max(steps, 1)
        self.metrics.log_value((module_id, VF_LOSS_KEY), vf_total / steps, window=1)
        self.metrics.log_value((module_id, COST_VF_LOSS_KEY), cvf_total / steps, window=1)
        return torch.as_tensor(cfg.vf_loss_coeff * vf_total / steps
                               + cfg.cost_vf_loss_coeff * cvf_total / steps)

    # --- State --------------------------------------------------------------------------
    @override(SafeTorchLearner)
    def get_safe_state(self) -> dict[str, Any]:
        return {**super().get_safe_state(), "episode_len": self.episode_len}

    @override(SafeTorchLearner)
    def set_safe_state(self, state: dict[str, Any]) -> None:
        super().set_safe_state(state)
        self.episode_len = float(state.get("episode_len", math.nan))

    @override(Learner)
    def compute_loss_for_module(self, **kwargs) -> torch.Tensor:
        raise NotImplementedError("CPO updates in _update(); it has no single loss.")
