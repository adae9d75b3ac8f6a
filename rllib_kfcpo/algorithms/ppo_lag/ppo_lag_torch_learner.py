"""Torch learner of PPO-Lagrangian."""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.ppo.ppo import LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY, Learner
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import explained_variance

from rllib_kfcpo.safe.columns import (
    COST_ADVANTAGES,
    COST_VALUE_TARGETS,
    COST_VF_EXPLAINED_VAR_KEY,
    COST_VF_LOSS_KEY,
    LAGRANGE_MULTIPLIER_KEY,
    MEAN_KL_KEY,
)
from rllib_kfcpo.safe.lagrange import LagrangeMultiplier
from rllib_kfcpo.safe.learner import SafeTorchLearner, masked_mean


class PPOLagTorchLearner(SafeTorchLearner):
    """Clipped PPO on ``(A_r - lambda A_c) / (1 + lambda)`` plus both critics' losses.

    The multiplier is whatever :meth:`make_multiplier` returns: an object with ``value``,
    ``update(episode_cost, cost_limit)``, ``state_dict()`` and ``load_state_dict()``
    (PPO-PID-Lagrangian swaps in a PID controller there).
    """

    #: Key of the multiplier's state inside the learner's ``safe_state``.
    MULTIPLIER_STATE_KEY = "lagrange"

    @override(SafeTorchLearner)
    def build(self) -> None:
        super().build()
        self.lagrange = self.make_multiplier()

    def make_multiplier(self) -> Any:
        """The multiplier of the surrogate: projected Adam on lambda (OmniSafe PPOLag)."""
        return LagrangeMultiplier(
            init=self.config.lagrangian_multiplier_init,
            lr=self.config.lagrangian_multiplier_lr,
            upper_bound=self.config.lagrangian_upper_bound,
        )

    @override(SafeTorchLearner)
    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        # Once per iteration, before the policy update (OmniSafe). Every learner gets the
        # same Jc and runs the same deterministic step, so lambda is identical on all.
        self.lagrange.update(self.episode_cost, self.config.cost_limit)
        for module_id in self.module.keys():
            self.metrics.log_value((module_id, LAGRANGE_MULTIPLIER_KEY), self.lagrange.value,
                                   window=1)

    @override(Learner)
    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        dist_cls = module.get_train_action_dist_cls()
        curr = dist_cls.from_logits(fwd_out[Columns.ACTION_DIST_INPUTS])
        prev = module.get_exploration_action_dist_cls().from_logits(
            batch[Columns.ACTION_DIST_INPUTS]
        )
        ratio = torch.exp(curr.logp(batch[Columns.ACTIONS]) - batch[Columns.ACTION_LOGP])

        lam = self.lagrange.value
        advantages = (batch[Postprocessing.ADVANTAGES] - lam * batch[COST_ADVANTAGES]) / (1 + lam)
        surrogate = torch.min(
            advantages * ratio,
            advantages * torch.clamp(ratio, 1 - config.clip_param, 1 + config.clip_param),
        )
        entropy = curr.entropy()

        values = module.compute_values(batch)
        cost_values = module.compute_cost_values(batch)
        vf_loss = (values - batch[Postprocessing.VALUE_TARGETS]).pow(2)
        cost_vf_loss = (cost_values - batch[COST_VALUE_TARGETS]).pow(2)

        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = masked_mean(
            -surrogate
            + config.vf_loss_coeff * vf_loss
            + config.cost_vf_loss_coeff * cost_vf_loss
            - entropy_coeff * entropy,
            batch,
        )
        with torch.no_grad():
            self.metrics.log_dict(
                {
                    POLICY_LOSS_KEY: -masked_mean(surrogate, batch),
                    VF_LOSS_KEY: masked_mean(vf_loss, batch),
                    COST_VF_LOSS_KEY: masked_mean(cost_vf_loss, batch),
                    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_variance(
                        batch[Postprocessing.VALUE_TARGETS], values
                    ),
                    COST_VF_EXPLAINED_VAR_KEY: explained_variance(
                        batch[COST_VALUE_TARGETS], cost_values
                    ),
                    ENTROPY_KEY: masked_mean(entropy, batch),
                    MEAN_KL_KEY: masked_mean(prev.kl(curr), batch),
                },
                key=module_id,
                window=1,
            )
        return total

    @override(SafeTorchLearner)
    def get_safe_state(self) -> dict[str, Any]:
        return {**super().get_safe_state(),
                self.MULTIPLIER_STATE_KEY: self.lagrange.state_dict()}

    @override(SafeTorchLearner)
    def set_safe_state(self, state: dict[str, Any]) -> None:
        super().set_safe_state(state)
        if self.MULTIPLIER_STATE_KEY in state:
            self.lagrange.load_state_dict(state[self.MULTIPLIER_STATE_KEY])
