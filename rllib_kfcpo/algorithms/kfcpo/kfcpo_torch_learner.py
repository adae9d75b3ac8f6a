"""Torch learner of KFCPO: one natural-gradient policy step per minibatch.

The step, as in docs/algorithm.md:

1. critics: one Adam step on the reward and cost value losses;
2. curvature: Fisher statistics from a backward of -mean log pi(a~|s), a~ ~ pi(.|s);
3. gradients g_r (reward surrogate ascent) and g_c (cost surrogate descent);
4. natural directions n_r = F^-1 g_r, n_c = F^-1 g_c (same curvature);
5. margin weights (w_r, w_c) from the windowed episode cost Jc and the limit d;
6. projection of the harmful direction when <n_r, n_c>_F < 0, blend d = w_r n_r' + w_c n_c';
7. trust region: step a d with a = min(max_step_size, sqrt(2 trust_region_kl / d'Fd));
8. rollback: if KL(behaviour || new) > target_kl, restore the snapshot and retry at half
   the step (``rollback_backtracks`` times); if no retry fits, keep the snapshot and freeze
   the policy for the rest of the iteration (critics keep training).

With several learners the module is not wrapped in DDP: gradients, Kronecker factors and
the KL are averaged with explicit all-reduces, so every learner takes the same step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY, Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from torch import nn

from rllib_kfcpo.algorithms.kfcpo import metrics as M
from rllib_kfcpo.algorithms.kfcpo.manipulation import (
    combine_directions,
    cost_margin,
    euclidean_inner,
    margin_weights,
    trust_region_step_size,
)
from rllib_kfcpo.kfac import KFACPreconditioner
from rllib_kfcpo.kfac.distributed import all_reduce_mean_
from rllib_kfcpo.safe.columns import COST_ADVANTAGES, COST_VALUE_TARGETS, COST_VF_LOSS_KEY
from rllib_kfcpo.safe.learner import SafeTorchLearner, masked_mean

CRITIC_OPTIMIZER = "critic"
#: Exact Fisher of a Gaussian's log-std, per dimension: E[(z^2 - 1)^2] = 2.
LOG_STD_FISHER = 2.0


def _distributed() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


class KFCPOTorchLearner(SafeTorchLearner):
    """KFCPO's learner (see module docstring)."""

    # --- Set-up -------------------------------------------------------------------------
    @override(SafeTorchLearner)
    def build(self) -> None:
        super().build()
        self.kfac: dict[str, KFACPreconditioner] = {}
        self.policy_frozen = False
        self.fisher_rng = torch.Generator(device="cpu")
        self.fisher_rng.manual_seed(int(self.config.seed or 0) + 7919)
        for module_id in self.module.keys():
            module = self.module[module_id].unwrapped()
            if _distributed():  # No DDP: start every learner from rank 0's weights.
                for tensor in module.state_dict().values():
                    torch.distributed.broadcast(tensor, src=0)
            cfg = self.config.get_config_for_module(module_id)
            self.kfac[module_id] = KFACPreconditioner(
                [m for m in module.pi.modules() if isinstance(m, nn.Linear)],
                [(module.log_std, LOG_STD_FISHER)],
                damping=cfg.kfac_damping,
                decay=cfg.kfac_decay,
                burn_in=cfg.kfac_burn_in,
            )

    @override(TorchLearner)
    def _make_modules_ddp_if_necessary(self) -> None:
        """KFCPO needs three separate backwards per step: no DDP, explicit all-reduces."""

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        module = self._module[module_id].unwrapped()
        params = module.critic_parameters()
        self.register_optimizer(
            module_id=module_id,
            optimizer_name=CRITIC_OPTIMIZER,
            optimizer=torch.optim.Adam(params),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    @override(SafeTorchLearner)
    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        self.policy_frozen = False

    # --- The update ---------------------------------------------------------------------
    @override(TorchLearner)
    def _update(self, batch: dict[str, Any], **kwargs) -> tuple[Any, Any, Any]:
        losses = {mid: self._kfcpo_step(mid, mb) for mid, mb in batch.items()}
        return {}, losses, {}

    def _kfcpo_step(self, module_id: str, batch: dict[str, Any]) -> torch.Tensor:
        cfg = self.config.get_config_for_module(module_id)
        module = self.module[module_id].unwrapped()
        critic_loss = self._critic_step(module_id, module, batch, cfg)
        if self.policy_frozen:
            self.metrics.log_value((module_id, M.FROZEN_MINIBATCHES), 1, reduce="sum")
            return critic_loss

        kfac = self.kfac[module_id]
        params = kfac.params
        obs = module.flat_obs(batch)
        started = time.perf_counter()
        if cfg.use_kfac:
            self._update_curvature(module, kfac, obs, batch)
        kfac_seconds = time.perf_counter() - started

        dist_cls = module.get_train_action_dist_cls()
        dist = dist_cls.from_logits(module.action_dist_inputs(obs))
        behaviour = dist_cls.from_logits(batch[Columns.ACTION_DIST_INPUTS])
        with torch.no_grad():
            kl_before = float(masked_mean(behaviour.kl(dist), batch))
        ratio = torch.exp(dist.logp(batch[Columns.ACTIONS]) - batch[Columns.ACTION_LOGP])
        reward_surrogate = masked_mean(ratio * batch[Postprocessing.ADVANTAGES], batch)
        cost_surrogate = masked_mean(ratio * batch[COST_ADVANTAGES], batch)
        g_reward = list(torch.autograd.grad(reward_surrogate, params, retain_graph=True))
        g_cost = [-g for g in torch.autograd.grad(cost_surrogate, params)]
        all_reduce_mean_(g_reward + g_cost)

        started = time.perf_counter()
        if cfg.use_kfac:
            n_reward, n_cost = kfac.precondition(g_reward), kfac.precondition(g_cost)
            inner = kfac.inner
        else:
            n_reward, n_cost, inner = g_reward, g_cost, euclidean_inner
        jc = self.episode_cost if math.isfinite(self.episode_cost) else 0.0
        w_reward, w_cost = margin_weights(
            cost_margin(jc, cfg.cost_limit), schedule=cfg.margin_schedule,
            temperature=cfg.margin_temperature, offset=cfg.margin_offset,
        )
        direction, info = combine_directions(
            n_reward, n_cost, w_reward, w_cost, inner, projection=cfg.projection
        )
        quad = float(inner(direction, direction))
        step = trust_region_step_size(quad, max_kl=cfg.trust_region_kl,
                                      max_step=cfg.max_step_size)
        kfac_seconds += time.perf_counter() - started
        finite = all(bool(torch.isfinite(d).all()) for d in direction)
        if not finite or step <= 0.0:
            self.metrics.log_value((module_id, M.SKIPPED_STEPS), 1, reduce="sum")
            return critic_loss

        kl, step, backtracks = self._step_with_rollback(module, params, direction, step, obs,
                                                        batch, cfg)
        self.metrics.log_value((module_id, M.BACKTRACKS), backtracks, reduce="sum")
        info["kl_before"] = kl_before
        self._log_step(module_id, cfg, kfac, info, w_reward, w_cost, quad, step, kl,
                       kfac_seconds, dist, batch, reward_surrogate)
        return critic_loss - reward_surrogate.detach()

    def _critic_step(self, module_id: str, module: Any, batch: dict[str, Any],
                     cfg: Any) -> torch.Tensor:
        vf_loss = masked_mean((module.compute_values(batch)
                               - batch[Postprocessing.VALUE_TARGETS]).pow(2), batch)
        cost_vf_loss = masked_mean((module.compute_cost_values(batch)
                                    - batch[COST_VALUE_TARGETS]).pow(2), batch)
        loss = cfg.vf_loss_coeff * vf_loss + cfg.cost_vf_loss_coeff * cost_vf_loss
        optimizer = self.get_optimizer(module_id, CRITIC_OPTIMIZER)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        params = module.critic_parameters()
        all_reduce_mean_([p.grad for p in params])
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        self.metrics.log_value((module_id, VF_LOSS_KEY), vf_loss.item(), reduce="mean")
        self.metrics.log_value((module_id, COST_VF_LOSS_KEY), cost_vf_loss.item(),
                               reduce="mean")
        return loss.detach()

    def _update_curvature(self, module: Any, kfac: KFACPreconditioner, obs: torch.Tensor,
                          batch: dict[str, Any]) -> None:
        """True-Fisher statistics: backward of -mean log pi(a~|s) with a~ ~ pi(.|s)."""
        mask = batch.get(Columns.LOSS_MASK)
        real_obs = obs[mask.bool()] if mask is not None else obs
        with kfac.capture():
            inputs = module.action_dist_inputs(real_obs)
            mean, log_std = inputs.chunk(2, dim=-1)
            noise = torch.randn(mean.shape, generator=self.fisher_rng).to(mean.device)
            sampled = (mean + log_std.exp() * noise).detach()
            dist = module.get_train_action_dist_cls().from_logits(inputs)
            torch.autograd.grad(-dist.logp(sampled).mean(), kfac.params)
        kfac.update_factors()

    def _step_with_rollback(self, module: Any, params: Sequence[nn.Parameter],
                            direction: Sequence[torch.Tensor], step: float,
                            obs: torch.Tensor, batch: dict[str, Any],
                            cfg: Any) -> tuple[float, float, int]:
        """Takes the step; if the real KL leaves ``target_kl``, undoes it bit-for-bit.

        After an undo the step is retried at half the size, up to ``rollback_backtracks``
        times; when no retry fits, the parameters stay at the snapshot and the policy is
        frozen for the rest of the iteration. Every decision uses the all-reduced KL, so
        all learners decide alike.

        Returns:
            ``(kl, step actually kept (0.0 when frozen), number of halvings)``.
        """
        snapshot = [p.detach().clone() for p in params]
        dist_cls = module.get_train_action_dist_cls()
        behaviour = dist_cls.from_logits(batch[Columns.ACTION_DIST_INPUTS])
        attempts = 1 + (cfg.rollback_backtracks if cfg.kl_rollback else 0)
        with torch.no_grad():
            for attempt in range(attempts):
                if attempt:  # undo the previous try, then try half of it
                    for p, saved in zip(params, snapshot, strict=True):
                        p.copy_(saved)
                    step *= 0.5
                for p, d in zip(params, direction, strict=True):
                    p.add_(d, alpha=step)
                current = dist_cls.from_logits(module.action_dist_inputs(obs))
                kl = masked_mean(behaviour.kl(current), batch).reshape(1)
                all_reduce_mean_([kl])
                kl_value = float(kl)
                if not cfg.kl_rollback or kl_value <= cfg.target_kl:
                    return kl_value, step, attempt
            for p, saved in zip(params, snapshot, strict=True):
                p.copy_(saved)
            self.policy_frozen = True
        return kl_value, 0.0, attempts - 1

    def _log_step(self, module_id: str, cfg: Any, kfac: KFACPreconditioner,
                  info: dict[str, float], w_reward: float, w_cost: float, quad: float,
                  step: float, kl: float, kfac_seconds: float, dist: Any,
                  batch: dict[str, Any], reward_surrogate: torch.Tensor) -> None:
        rolled_back = int(self.policy_frozen)
        values = {
            M.COS_BEFORE: info["cos_before"],
            M.COS_AFTER: info["cos_after"],
            M.CONFLICT: info["conflict"],
            M.WEIGHT_REWARD: w_reward,
            M.WEIGHT_COST: w_cost,
            M.DIRECTION_QUAD: quad,
            M.STEP_SIZE: step,
            M.QUAD_KL: 0.5 * step**2 * quad,
            M.KL_BEFORE_STEP: info["kl_before"],
            M.KL_AFTER_STEP: kl,
            M.KFAC_SECONDS: kfac_seconds,
            ENTROPY_KEY: float(masked_mean(dist.entropy(), batch).detach()),
            POLICY_LOSS_KEY: -float(reward_surrogate),
        }
        for key, value in values.items():
            self.metrics.log_value((module_id, key), value, reduce="mean")
        self.metrics.log_value((module_id, M.ROLLBACKS), rolled_back, reduce="sum")
        self.metrics.log_value((module_id, M.POLICY_STEPS), 1 - rolled_back, reduce="sum")
        if cfg.use_kfac:
            for key, value in kfac.diagnostics().items():
                self.metrics.log_value((module_id, f"kfac_{key}"), float(value), window=1)

    # --- State --------------------------------------------------------------------------
    @override(SafeTorchLearner)
    def get_safe_state(self) -> dict[str, Any]:
        return {
            **super().get_safe_state(),
            "kfac": {mid: k.state_dict() for mid, k in self.kfac.items()},
            "fisher_rng": self.fisher_rng.get_state(),
        }

    @override(SafeTorchLearner)
    def set_safe_state(self, state: dict[str, Any]) -> None:
        super().set_safe_state(state)
        for mid, kfac_state in state.get("kfac", {}).items():
            if mid in self.kfac:
                self.kfac[mid].load_state_dict(kfac_state)
        if "fisher_rng" in state:
            self.fisher_rng.set_state(state["fisher_rng"])

    @override(Learner)
    def compute_loss_for_module(self, **kwargs) -> torch.Tensor:
        raise NotImplementedError("KFCPO updates in _update(); it has no single loss.")
