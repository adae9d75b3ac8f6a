"""Configuration shared by every safe algorithm (PPO-Lagrangian, KFCPO, ...).

Defaults follow OmniSafe's on-policy benchmark protocol (cost limit 25, 64x64 tanh
networks, observation normalisation on, gamma 0.99, GAE lambda 0.95 for reward and cost,
Adam 3e-4, gradient-norm clip 40, 20,000 env steps per iteration). Each safe algorithm
subclasses :class:`SafeAlgorithmConfig` and adds only its own settings.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.connectors.learner import BatchIndividualItems
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils import force_list
from ray.rllib.utils.annotations import override

from rllib_kfcpo.modules.safe_actor_critic import SafeActorCriticTorchModule
from rllib_kfcpo.safe.callbacks import SafeMetricsCallback
from rllib_kfcpo.safe.connectors import (
    COST_ADVANTAGE_MODES,
    DEFAULT_CONNECTOR_TIMING_INTERVAL,
    AddCostsToBatch,
    SampledTimingEnvToModulePipeline,
    SampledTimingModuleToEnvPipeline,
)
from rllib_kfcpo.safe.rules import Rule, check_rules, integer, number, one_of

#: The shared settings' rules (rllib_kfcpo.safe.rules), checked before RLlib's own checks.
SAFE_RULES = (
    Rule("cost_limit", number(0), "a finite number >= 0 (OmniSafe's benchmarks use 25)"),
    Rule("cost_gamma", number(0, 1), "in [0, 1]"),
    Rule("cost_lambda", number(0, 1), "in [0, 1]"),
    Rule("cost_vf_loss_coeff", number(0), "a finite number >= 0"),
    Rule("cost_window_episodes", integer(0),
         "an integer >= 0 (OmniSafe: 100; 0 = the latest iteration's episodes)"),
    Rule("cost_advantages", one_of(COST_ADVANTAGE_MODES), f"one of {COST_ADVANTAGE_MODES}"),
    Rule("num_learners", number(0), "a number >= 0", method="learners"),
    Rule("num_gpus_per_learner", number(0), "a number >= 0", method="learners"),
    Rule("num_env_runners", number(0), "a number >= 0", method="env_runners"),
    Rule("num_envs_per_env_runner", number(1), "a number >= 1", method="env_runners"),
    Rule("connector_timing_interval", integer(1),
         "an integer >= 1 (1 = time every connector call, RLlib's behaviour)",
         method="connector_timing", key="interval"),
    Rule("max_sampling_outage_s", number(0, low_open=True),
         "a finite number of seconds > 0", method="fault_tolerance"),
    Rule("train_batch_size", integer(1), "a positive integer"),
    Rule("minibatch_size", integer(1), "a positive integer"),
    Rule("num_epochs", integer(1), "a positive integer"),
    Rule("train_batch_size_per_learner", integer(1), "a positive integer"),
    Rule("rollout_fragment_length", lambda v: v == "auto" or integer(1)(v),
         "'auto' or a positive integer", method="env_runners"),
)


class SafeAlgorithmConfig(PPOConfig):
    """Base config of every safe algorithm: what they share, not a "safe PPO".

    It holds the constraint (cost limit, Jc window), cost estimation (cost GAE, cost critic,
    cost-advantage normalisation), observation normalisation, and RLlib's sampling,
    batching and resource settings. It subclasses ``PPOConfig`` for RLlib's on-policy
    machinery (GAE connector, minibatch iteration); PPO's own loss settings that an
    algorithm does not read are listed in its ``UNUSED_INHERITED_SETTINGS`` and refused
    when set (nothing is silently ignored).
    """

    #: Inherited PPOConfig settings no safe algorithm reads (every one trains a critic and
    #: uses GAE, and none adds PPO's KL penalty or clips the value function): setting one
    #: to a value other than its default is refused by ``validate()``. Subclasses extend it.
    UNUSED_INHERITED_SETTINGS: tuple[str, ...] = (
        "use_critic", "use_gae", "use_kl_loss", "kl_coeff", "kl_target", "vf_clip_param",
    )

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class)
        # Constraint and cost estimation (shared by every safe algorithm).
        self.cost_limit = 25.0
        self.cost_gamma = 0.99
        self.cost_lambda = 0.95
        self.cost_vf_loss_coeff = 1.0
        # OmniSafe's protocol: Jc over the last 100 finished episodes, standardised cost
        # advantages (docs/cost-semantics.md).
        self.cost_window_episodes = 100
        self.cost_advantages = "standardize"
        self.normalize_observations = True
        # Env runners record their connector-pipeline timers on 1 call in this many
        # (sampling cost; see rllib_kfcpo.safe.connectors). 1 = every call, like RLlib.
        self.connector_timing_interval = DEFAULT_CONNECTOR_TIMING_INTERVAL
        # OmniSafe protocol defaults for the shared machinery.
        self.gamma = 0.99
        self.lambda_ = 0.95
        self.lr = 3e-4
        self.grad_clip = 40.0
        self.grad_clip_by = "global_norm"
        self.train_batch_size = 20000
        self.minibatch_size = 64
        self.num_epochs = 40
        self.use_kl_loss = False
        self.entropy_coeff = 0.0
        self.vf_clip_param = float("inf")
        self.callbacks_class = SafeMetricsCallback
        # Fault tolerance: a crashed env runner is restarted and training goes on (RLlib's
        # default today; set here so it stays the package's default). Bad env data is
        # still raised, see SafeAlgorithm._sample.
        self.restart_failed_env_runners = True
        # ... but not forever: iterations without a single sample for this long (every env
        # runner dead and none restored, e.g. killed again and again by Ray's memory
        # monitor) raise SamplingOutageError instead of training on nothing.
        self.max_sampling_outage_s = 600.0

    @override(PPOConfig)
    def training(
        self,
        *,
        cost_limit: float | None = NotProvided,
        cost_gamma: float | None = NotProvided,
        cost_lambda: float | None = NotProvided,
        cost_vf_loss_coeff: float | None = NotProvided,
        cost_window_episodes: int | None = NotProvided,
        cost_advantages: str | None = NotProvided,
        **kwargs: Any,
    ) -> SafeAlgorithmConfig:
        """Sets training settings; the safe ones are below, the rest are PPOConfig's.

        Args:
            cost_limit: d, the bound on the expected episode cost (undiscounted sum of
                raw per-step costs). Compared with the windowed mean episode cost.
            cost_gamma: Discount of the cost critic and cost GAE.
            cost_lambda: GAE lambda for cost advantages.
            cost_vf_loss_coeff: Weight of the cost critic's squared error.
            cost_window_episodes: Jc, the episode cost every constraint rule reads, is the
                mean over the last this-many finished episodes of all env runners
                (OmniSafe: 100). 0: RLlib's ``episode_cost_mean``, the mean over the
                latest iteration's episodes.
            cost_advantages: ``"standardize"`` (OmniSafe) or ``"center"`` the cost
                advantages over the batch (reward advantages are always standardised).
        """
        super().training(**kwargs)
        self._set_provided(cost_limit=cost_limit, cost_gamma=cost_gamma,
                           cost_lambda=cost_lambda, cost_vf_loss_coeff=cost_vf_loss_coeff,
                           cost_window_episodes=cost_window_episodes,
                           cost_advantages=cost_advantages)
        return self

    def _set_provided(self, **values: Any) -> None:
        """Sets every given setting that is not ``NotProvided`` (``training()``'s rule)."""
        for name, value in values.items():
            if value is not NotProvided:
                setattr(self, name, value)

    @override(PPOConfig)
    def fault_tolerance(self, *, max_sampling_outage_s: float | None = NotProvided,
                        **kwargs: Any) -> SafeAlgorithmConfig:
        """RLlib's fault-tolerance settings, and one of the package's.

        Args:
            max_sampling_outage_s: How long training may go on without any env runner
                returning a sample (every runner failed and none was restored yet) before
                it stops with :class:`~rllib_kfcpo.safe.algorithm.SamplingOutageError`
                (default 600 s; a runner restart takes seconds).
            **kwargs: ``AlgorithmConfig.fault_tolerance``'s settings.
        """
        super().fault_tolerance(**kwargs)
        self._set_provided(max_sampling_outage_s=max_sampling_outage_s)
        return self

    def observation_normalization(self, enabled: bool = True) -> SafeAlgorithmConfig:
        """Turns the running mean/std observation filter on env runners on or off."""
        self.normalize_observations = enabled
        return self

    def connector_timing(self, interval: int = DEFAULT_CONNECTOR_TIMING_INTERVAL
                         ) -> SafeAlgorithmConfig:
        """How often the env runners' connector pipelines record their timing metrics.

        RLlib times every env-to-module and module-to-env pipeline call and each of their
        pieces (14 timers per env step), a large share of the per-step sampling cost on
        fast envs. With ``interval=n`` one call in n is timed (the metrics keep their keys
        and per-call means); the sampled data is the same for every ``n``. ``1`` restores
        RLlib's behaviour.
        """
        self.connector_timing_interval = interval
        return self

    @override(PPOConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=SafeActorCriticTorchModule)

    @override(PPOConfig)
    def build_env_to_module_connector(self, env=None, spaces=None, device=None):
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        if self.normalize_observations:
            pipeline.prepend(MeanStdFilter(multi_agent=False))
        return SampledTimingEnvToModulePipeline.from_pipeline(
            pipeline, self.connector_timing_interval)

    @override(PPOConfig)
    def build_module_to_env_connector(self, env=None, spaces=None):
        pipeline = super().build_module_to_env_connector(env=env, spaces=spaces)
        return SampledTimingModuleToEnvPipeline.from_pipeline(
            pipeline, self.connector_timing_interval)

    @override(PPOConfig)
    def build_learner_connector(self, input_observation_space, input_action_space, device=None):
        pipeline = super().build_learner_connector(
            input_observation_space, input_action_space, device=device
        )
        pipeline.insert_before(BatchIndividualItems, AddCostsToBatch())
        return pipeline

    @override(PPOConfig)
    def validate(self) -> None:
        # Our checks run before RLlib's, so bad values get one message naming the key, the
        # value and what is allowed (RLlib's own checks can loop or fail obscurely on them).
        self._validate_safe_settings()
        super().validate()
        if self.framework_str != "torch":
            raise ValueError(
                f"framework={self.framework_str!r}: rllib_kfcpo supports only torch. "
                "Remove the framework setting or set config.framework('torch')."
            )
        # The episode-cost metric is what every constraint rule reads: keep our callback
        # in the list whatever callbacks the user configured.
        callbacks = force_list(self.callbacks_class)
        if not any(isinstance(c, type) and issubclass(c, SafeMetricsCallback)
                   for c in callbacks):
            self.callbacks_class = [SafeMetricsCallback, *callbacks]

    def _refuse_unused_settings(self) -> None:
        """One error naming an inherited setting this algorithm would ignore, if any is set."""
        defaults = type(self)()
        algo = type(self).__name__.removesuffix("Config")
        for name in self.UNUSED_INHERITED_SETTINGS:
            value, default = getattr(self, name), getattr(defaults, name)
            if value != default and not (value is None and default is None):
                raise ValueError(
                    f"training({name}={value!r}) is not used by {algo}: it is a PPO setting "
                    f"{algo} does not read. Remove it (default {default!r})."
                )

    def _validate_safe_settings(self) -> None:
        """Cost, batch-size and resource-count settings (one clear error per bad key)."""
        self._refuse_unused_settings()
        check_rules(self, SAFE_RULES)
        gpus = float(self.num_gpus_per_learner or 0)
        if self.num_learners > 1 and 0.0 < gpus < 1.0:
            # Several learners all-reduce over NCCL once they hold GPUs, and NCCL refuses
            # two ranks on one device ("Duplicate GPU detected", seen on an H200) only after
            # every learner actor has started.
            raise ValueError(
                f"learners(num_learners={self.num_learners}, num_gpus_per_learner={gpus:g}) "
                "puts several learners on one GPU, which their NCCL all-reduce refuses. "
                "Give each learner a whole GPU (num_gpus_per_learner=1, one GPU per "
                "learner), use one GPU learner (num_learners=0 or 1), or train the learners "
                "on CPU (num_gpus_per_learner=0)."
            )
        tbs = self.train_batch_size_per_learner
        if isinstance(tbs, int) and isinstance(self.minibatch_size, int) \
                and self.minibatch_size > tbs:
            raise ValueError(
                f"training(minibatch_size={self.minibatch_size}) is invalid: it is larger "
                f"than the per-learner train batch ({tbs} = train_batch_size "
                f"{self.train_batch_size} / num_learners {max(self.num_learners, 1)}). Make "
                f"minibatch_size at most {tbs} or raise train_batch_size."
            )

