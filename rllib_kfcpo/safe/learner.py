"""Learner machinery every safe algorithm shares.

:class:`SafeTorchLearner` puts the cost into the learner connector pipeline (cost column,
reward and cost GAE), receives the windowed episode cost Jc from the driver each
iteration, trains nothing by itself, and checkpoints algorithm-specific state through
:meth:`get_safe_state` / :meth:`set_safe_state`. Algorithms subclass it and add only
their policy update.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner import GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override

from rllib_kfcpo.distributed import all_reduce_mean_, is_distributed
from rllib_kfcpo.rllib_seam import CustomStepLearnerMixin, learner_connector, wants_component
from rllib_kfcpo.safe.columns import (
    COST_LIMIT_KEY,
    COST_VALUE_TARGETS,
    EPISODE_COST_FOR_LEARNER,
    EPISODE_COST_SEEN_KEY,
)
from rllib_kfcpo.safe.connectors import SafeGeneralAdvantageEstimation

#: Name of the critics' own Adam optimizer in learners whose policy takes a non-SGD step.
CRITIC_OPTIMIZER = "critic"
#: Learner-state component holding algorithm state beyond module/optimizer/metrics.
COMPONENT_SAFE_STATE = "safe_state"
#: Version of the ``safe_state`` layout; bump it when it changes incompatibly.
SAFE_STATE_FORMAT_VERSION = 1


class LearnerStateMismatchError(ValueError):
    """Learner state written by another algorithm's learner or another format version."""


def check_safe_state(state: dict[str, Any], learner_class: type) -> None:
    """Raises :class:`LearnerStateMismatchError` unless ``state`` fits ``learner_class``.

    The writer must be ``learner_class`` or one of its bases and the format version this
    package's. State written before the version was recorded (no ``format_version``) is
    accepted as is.
    """
    if "format_version" not in state:
        return
    written_by = state.get("learner_class")
    name = learner_class.__name__
    if written_by not in {c.__name__ for c in learner_class.__mro__
                          if issubclass(c, SafeTorchLearner)}:
        raise LearnerStateMismatchError(
            f"The learner state was written by {written_by or 'an unknown learner'}, not "
            f"{name}: restoring it would mix another algorithm's optimizer and "
            "constraint state into this one. Restore the checkpoint with the algorithm that "
            "wrote it, or start from scratch."
        )
    version = state["format_version"]
    if version != SAFE_STATE_FORMAT_VERSION:
        raise LearnerStateMismatchError(
            f"The learner state of {name} has format version {version!r}; this "
            f"rllib_kfcpo reads version {SAFE_STATE_FORMAT_VERSION}. Restore it with the "
            "rllib_kfcpo release that wrote it."
        )


def masked_mean(x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Mean over the real (non-bootstrap) steps of a minibatch."""
    mask = batch.get(Columns.LOSS_MASK)
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp_min(1)


class SafeTorchLearner(PPOTorchLearner):
    """Base torch learner of the safe algorithms (see module docstring)."""

    @override(PPOTorchLearner)
    def build(self) -> None:
        super().build()
        #: Jc as last received from the driver (NaN until an episode has finished).
        self.episode_cost = math.nan
        if (
            learner_connector(self) is not None
            and self.config.add_default_connectors_to_learner_pipeline
        ):
            learner_connector(self).remove(GeneralAdvantageEstimation)
            learner_connector(self).append(
                SafeGeneralAdvantageEstimation(
                    gamma=self.config.gamma,
                    lambda_=self.config.lambda_,
                    cost_gamma=self.config.cost_gamma,
                    cost_lambda=self.config.cost_lambda,
                    cost_advantages=self.config.cost_advantages,
                )
            )

    @override(Learner)
    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        jc = float(timesteps.get(EPISODE_COST_FOR_LEARNER, math.nan))
        if math.isfinite(jc):
            self.episode_cost = jc
        for module_id in self.module.keys():
            self.metrics.log_value((module_id, EPISODE_COST_SEEN_KEY), self.episode_cost,
                                   window=1)
            self.metrics.log_value((module_id, COST_LIMIT_KEY), float(self.config.cost_limit),
                                   window=1)

    # --- Shared pieces of learners with a non-SGD policy step (KFCPO, CPO) ---------------
    def broadcast_weights_from_rank0(self) -> None:
        """Without DDP every learner must start from the same weights: rank 0's."""
        if not is_distributed():
            return
        for module_id in self.module.keys():
            for tensor in self.module[module_id].unwrapped().state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    def register_critic_optimizer(self, module_id: str, config: Any) -> None:
        """Adam over both critics (lr ``config.lr``) as the module's only optimizer."""
        params = self.module[module_id].unwrapped().critic_parameters()
        self.register_optimizer(module_id=module_id, optimizer_name=CRITIC_OPTIMIZER,
                                optimizer=torch.optim.Adam(params), params=params,
                                lr_or_lr_schedule=config.lr)

    def critic_step(self, module_id: str, module: Any, batch: dict[str, Any],
                    cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step of both critics on ``batch``: gradients averaged over learners and
        clipped to ``grad_clip`` (global norm); returns the detached value losses."""
        vf_loss = masked_mean((module.compute_values(batch)
                               - batch[Postprocessing.VALUE_TARGETS]).pow(2), batch)
        cost_vf_loss = masked_mean((module.compute_cost_values(batch)
                                    - batch[COST_VALUE_TARGETS]).pow(2), batch)
        loss = cfg.vf_loss_coeff * vf_loss + cfg.cost_vf_loss_coeff * cost_vf_loss
        optimizer = self.get_optimizer(module_id, CRITIC_OPTIMIZER)
        params = module.critic_parameters()
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        all_reduce_mean_([p.grad for p in params])
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        return vf_loss.detach(), cost_vf_loss.detach()

    # --- Extra state -------------------------------------------------------------------
    def get_safe_state(self) -> dict[str, Any]:
        """Algorithm state that must survive a checkpoint (override and extend)."""
        return {"episode_cost": self.episode_cost,
                "learner_class": type(self).__name__,
                "format_version": SAFE_STATE_FORMAT_VERSION}

    def set_safe_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_safe_state` returned (override and extend)."""
        self.episode_cost = float(state.get("episode_cost", math.nan))

    @override(Learner)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if wants_component(self, COMPONENT_SAFE_STATE, components, not_components):
            state[COMPONENT_SAFE_STATE] = self.get_safe_state()
        return state

    @override(Learner)
    def set_state(self, state: dict[str, Any]) -> None:
        # Check before anything is loaded, so a refused state leaves this learner untouched.
        if COMPONENT_SAFE_STATE in state:
            check_safe_state(state[COMPONENT_SAFE_STATE], type(self))
        super().set_state(state)
        if COMPONENT_SAFE_STATE in state:
            self.set_safe_state(state[COMPONENT_SAFE_STATE])


class NonSGDPolicyLearner(CustomStepLearnerMixin, SafeTorchLearner):
    """Base of learners whose policy takes a trust-region step, not an optimizer step.

    The critics get their own Adam (:data:`CRITIC_OPTIMIZER`, lr ``lr``), every learner
    starts from rank 0's weights (no DDP), and subclasses write ``custom_update``.
    """

    @override(SafeTorchLearner)
    def build(self) -> None:
        super().build()
        self.broadcast_weights_from_rank0()

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        self.register_critic_optimizer(module_id, config)
