"""Connector pieces: the cost as a first-class train-batch column, and cheap-timing pipelines.

Pipeline order (``AddCostsToBatch`` inserted by
:meth:`rllib_kfcpo.safe.config.SafeAlgorithmConfig.build_learner_connector`, the GAE swapped
by :class:`rllib_kfcpo.safe.learner.SafeTorchLearner`)::

    AddOneTsToEpisodesAndTruncate      (RLlib; one bootstrap step per episode chunk)
    AddObservationsFromEpisodesToBatch (RLlib default)
    AddColumnsFromEpisodesToTrainBatch (RLlib default)
    AddCostsToBatch                    (ours, before batching)
    BatchIndividualItems, NumpyToTensor (RLlib default)
    SafeGeneralAdvantageEstimation     (ours; replaces RLlib's GAE)

Index convention: RLlib stores the reset info at ``infos[0]`` of an episode, so the cost
of step ``t`` (the action taken at observation ``t``) is ``infos[t + 1]["cost"]``.

The env runners' env-to-module and module-to-env pipelines are RLlib's, with one change
(:class:`SampledTimingEnvToModulePipeline`, :class:`SampledTimingModuleToEnvPipeline`):
their per-call timing metrics are recorded on every ``timing_interval``-th call only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.env_to_module import EnvToModulePipeline
from ray.rllib.connectors.module_to_env import ModuleToEnvPipeline
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets

from rllib_kfcpo.distributed import all_reduce_mean_
from rllib_kfcpo.env_data import read_step_cost
from rllib_kfcpo.safe.columns import COST_ADVANTAGES, COST_VALUE_TARGETS, COSTS, ROW_INDEX

_BOOTSTRAP_ADDED = "_added_loss_mask_for_valid_episode_ts"

#: Default of ``timing_interval``: time one env-runner pipeline call in this many.
DEFAULT_CONNECTOR_TIMING_INTERVAL = 10


class _SampledTimingMixin:
    """Passes the ``MetricsLogger`` to the pipeline on every ``timing_interval``-th call only.

    RLlib's ``ConnectorPipelineV2.__call__`` opens one ``MetricsLogger.log_time`` context
    for the whole pipeline and one per connector piece (plus two ``log_value`` calls in
    ``EnvToModulePipeline``): 14 of the env runner's 16 timers per env step with the
    default pipelines, about a fifth of its per-step time on a fast env (HalfCheetah, 1
    env per runner). Those metrics are diagnostics only: no connector piece reads ``metrics``, so
    the data flowing through the pipeline is identical whether or not it is passed.
    Timing one call in ``timing_interval`` (the first one included) keeps every timer key
    and its (smoothed, per-call) mean while cutting the cost by that factor.
    ``timing_interval=1`` is RLlib's behaviour.
    """

    def __init__(self, *args: Any, timing_interval: int = DEFAULT_CONNECTOR_TIMING_INTERVAL,
                 **kwargs: Any) -> None:
        if isinstance(timing_interval, bool) or not isinstance(timing_interval, int) \
                or timing_interval < 1:
            raise ValueError(
                f"timing_interval={timing_interval!r} is invalid: it must be an integer "
                ">= 1 (1 = time every call, RLlib's behaviour)."
            )
        super().__init__(*args, **kwargs)
        self.timing_interval = timing_interval
        self._num_calls = 0

    @classmethod
    def from_pipeline(cls, pipeline: ConnectorPipelineV2, timing_interval: int
                      ) -> ConnectorPipelineV2:
        """The same connector pieces and input spaces in a sampled-timing pipeline."""
        return cls(pipeline.input_observation_space, pipeline.input_action_space,
                   connectors=list(pipeline.connectors), timing_interval=timing_interval)

    @override(ConnectorPipelineV2)
    def __call__(self, *, metrics: Any = None, **kwargs: Any) -> Any:
        timed = self._num_calls % self.timing_interval == 0
        self._num_calls += 1
        return super().__call__(metrics=metrics if timed else None, **kwargs)

    @override(ConnectorPipelineV2)
    def get_ctor_args_and_kwargs(self) -> tuple[tuple, dict[str, Any]]:
        args, kwargs = super().get_ctor_args_and_kwargs()
        return args, {**kwargs, "timing_interval": self.timing_interval}


class SampledTimingEnvToModulePipeline(_SampledTimingMixin, EnvToModulePipeline):
    """RLlib's ``EnvToModulePipeline`` with sampled timing metrics (see the mixin)."""


class SampledTimingModuleToEnvPipeline(_SampledTimingMixin, ModuleToEnvPipeline):
    """RLlib's ``ModuleToEnvPipeline`` with sampled timing metrics (see the mixin)."""


class AddCostsToBatch(ConnectorV2):
    """Adds the per-step cost ``infos[t + 1]["cost"]`` of every step as column ``costs``.

    When ``AddOneTsToEpisodesAndTruncate`` ran before (it appends a copy of the last info
    as an artificial bootstrap step), that extra step gets cost 0, like its reward.
    """

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs,
    ) -> Any:
        if COSTS in batch:
            return batch
        bootstrap_added = bool((shared_data or {}).get(_BOOTSTRAP_ADDED))
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            n = len(episode)
            n_real = n - 1 if bootstrap_added else n
            infos = episode.get_infos(slice(1, n_real + 1))
            costs = [read_step_cost(info) for info in infos] + [0.0] * (n - n_real)
            self.add_n_batch_items(batch, COSTS, costs, n, episode)
        return batch


def _masked_mean_std(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``x[mask]`` over all learners (one all-reduce when distributed)."""
    stats = torch.tensor(
        [float(mask.sum()), float(x[mask].sum()), float((x[mask] ** 2).sum())],
        dtype=torch.float64,
    )
    all_reduce_mean_([stats])  # averages of (n, sum, sumsq): the ratios are global.
    n, s, ss = stats.tolist()
    mean = s / max(n, 1e-12)
    var = max(ss / max(n, 1e-12) - mean**2, 0.0)
    return mean, var**0.5


#: Normalisations of the cost advantages (``training(cost_advantages=...)``).
COST_ADVANTAGE_MODES = ("standardize", "center")


class SafeGeneralAdvantageEstimation(ConnectorV2):
    """GAE for rewards and for costs, each with its own gamma and lambda.

    Adds ``advantages``/``value_targets`` (reward), ``cost_advantages``/
    ``cost_value_targets`` and ``row_index`` (each row's position in the batch).
    Truncated chunks bootstrap from the value of the extra step, terminated episodes do
    not (RLlib's ``compute_value_targets`` convention). Reward advantages are
    standardised; cost advantages are standardised or centred (see below); both
    statistics are taken over the real steps of the whole batch across all learners, so a
    batch split over n learners is normalised exactly like the whole batch on one learner.

    Cost advantages (``cost_advantages``): ``"standardize"`` (mean 0, std 1, OmniSafe's
    ``standardized_cost_adv: true``) or ``"center"`` (mean 0, the cost scale kept).
    """

    def __init__(
        self,
        input_observation_space=None,
        input_action_space=None,
        *,
        gamma: float,
        lambda_: float,
        cost_gamma: float,
        cost_lambda: float,
        standardize_reward_advantages: bool = True,
        cost_advantages: str = "standardize",
    ) -> None:
        super().__init__(input_observation_space, input_action_space)
        self.gamma = gamma
        self.lambda_ = lambda_
        self.cost_gamma = cost_gamma
        self.cost_lambda = cost_lambda
        self.standardize_reward_advantages = standardize_reward_advantages
        if cost_advantages not in COST_ADVANTAGE_MODES:
            raise ValueError(f"cost_advantages={cost_advantages!r} is invalid: use one of "
                             f"{COST_ADVANTAGE_MODES}.")
        self.cost_advantages = cost_advantages

    @override(ConnectorV2)
    def __call__(
        self, *, rl_module: Any, episodes: list[Any], batch: dict[str, Any], **kwargs
    ) -> Any:
        for module_id, module_batch in batch.items():
            module = rl_module[module_id].unwrapped()
            with torch.no_grad():
                values = convert_to_numpy(module.compute_values(module_batch))
                cost_values = convert_to_numpy(module.compute_cost_values(module_batch))
            device = module_batch[Columns.OBS].device

            def np_(key: str, module_batch: dict[str, Any] = module_batch) -> np.ndarray:
                return convert_to_numpy(module_batch[key]).astype(np.float32)

            terminateds, truncateds = np_(Columns.TERMINATEDS), np_(Columns.TRUNCATEDS)
            targets = compute_value_targets(
                values=values, rewards=np_(Columns.REWARDS), terminateds=terminateds,
                truncateds=truncateds, gamma=self.gamma, lambda_=self.lambda_,
            )
            cost_targets = compute_value_targets(
                values=cost_values, rewards=np_(COSTS), terminateds=terminateds,
                truncateds=truncateds, gamma=self.cost_gamma, lambda_=self.cost_lambda,
            )
            adv = targets - values
            cost_adv = cost_targets - cost_values
            if Columns.LOSS_MASK in module_batch:
                mask = convert_to_numpy(module_batch[Columns.LOSS_MASK]).astype(bool)
            else:
                mask = np.ones_like(adv, dtype=bool)
            if self.standardize_reward_advantages:
                mean, std = _masked_mean_std(adv, mask)
                adv = (adv - mean) / max(std, 1e-8)
            mean, std = _masked_mean_std(cost_adv, mask)
            cost_adv = cost_adv - mean
            if self.cost_advantages == "standardize":
                cost_adv = cost_adv / max(std, 1e-8)
            for key, value in (
                (Postprocessing.ADVANTAGES, adv),
                (Postprocessing.VALUE_TARGETS, targets),
                (COST_ADVANTAGES, cost_adv),
                (COST_VALUE_TARGETS, cost_targets),
            ):
                module_batch[key] = torch.as_tensor(value, dtype=torch.float32, device=device)
            module_batch[COSTS] = torch.as_tensor(np_(COSTS), device=device)
            module_batch[ROW_INDEX] = torch.arange(len(adv), device=device)
        return batch
