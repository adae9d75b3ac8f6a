"""CPO: Constrained Policy Optimization (Achiam, Held, Tamar & Abbeel, 2017).

One policy step per iteration from the whole batch, as OmniSafe's CPO: natural directions
``x = F^-1 g`` and ``p = F^-1 b`` by conjugate gradient on exact Fisher-vector products,
the closed-form solution of the trust-region + linearised-cost subproblem (or the
recovery step when no step in the trust region meets the linearised constraint), and a
backtracking line search that keeps a step only if the real KL is within ``target_kl`` and
the surrogate reward/cost conditions hold. The critics are then trained with Adam on
minibatches (``num_epochs`` passes of ``minibatch_size``; ``lr`` is the critics' learning
rate). See docs/algorithm.md, "CPO".
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_LEN_MEAN

from rllib_kfcpo.safe.algorithm import SafeAlgorithm
from rllib_kfcpo.safe.config import SafeAlgorithmConfig
from rllib_kfcpo.safe.rules import Rule, check_rules, integer, number

#: Key of the mean episode length the driver hands to CPO's learners in ``timesteps``.
EPISODE_LEN_FOR_LEARNER = "safe_episode_len_mean"


#: CPO's settings' rules (rllib_kfcpo.safe.rules).
CPO_RULES = (
    Rule("target_kl", number(0, low_open=True), "a finite number > 0"),
    Rule("cg_iters", integer(1), "an integer >= 1"),
    Rule("cg_damping", number(0), "a finite number >= 0"),
    Rule("fvp_sample_freq", integer(1), "an integer >= 1 (1: every sample)"),
    Rule("line_search_steps", integer(1), "an integer >= 1"),
    Rule("line_search_decay", number(0, 1, low_open=True, high_open=True), "a number in (0, 1)"),
)


class CPOConfig(SafeAlgorithmConfig):
    """Config of :class:`CPO`; defaults are OmniSafe's CPO (``configs/on-policy/CPO.yaml``).

    The policy takes one trust-region step per iteration (no optimizer): ``lr``,
    ``grad_clip``, ``num_epochs`` and ``minibatch_size`` act on the critics only; PPO's
    loss settings are refused when set.
    """

    UNUSED_INHERITED_SETTINGS = (
        *SafeAlgorithmConfig.UNUSED_INHERITED_SETTINGS,
        "clip_param", "entropy_coeff", "entropy_coeff_schedule", "grad_clip_by",
    )

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or CPO)
        self.target_kl = 0.01
        self.cg_iters = 15
        self.cg_damping = 0.1
        self.fvp_sample_freq = 1
        self.line_search_steps = 20
        self.line_search_decay = 0.8
        # The critics (the policy takes the trust-region step): OmniSafe CPO's update_iters
        # 10, batch_size 128, critic lr 1e-3.
        self.num_epochs = 10
        self.minibatch_size = 128
        self.lr = 1e-3

    @override(SafeAlgorithmConfig)
    def training(
        self,
        *,
        target_kl: float | None = NotProvided,
        cg_iters: int | None = NotProvided,
        cg_damping: float | None = NotProvided,
        fvp_sample_freq: int | None = NotProvided,
        line_search_steps: int | None = NotProvided,
        line_search_decay: float | None = NotProvided,
        **kwargs: Any,
    ) -> CPOConfig:
        """CPO settings (others as in SafeAlgorithmConfig/PPOConfig).

        ``lr``, ``num_epochs`` and ``minibatch_size`` apply to the critics only.

        Args:
            target_kl: delta: the trust region ``0.5 d'Fd <= delta`` of the subproblem and
                the bound on the real mean KL a line-search step must keep.
            cg_iters: Conjugate-gradient iterations per solve (two solves per iteration).
            cg_damping: Added to the Fisher: CG solves ``(F + damping I) x = g``.
            fvp_sample_freq: Fisher-vector products use every n-th sample of the batch.
            line_search_steps: Backtracking tries (step fractions 1, decay, decay^2, ...).
            line_search_decay: Factor between two tries.
        """
        super().training(**kwargs)
        self._set_provided(target_kl=target_kl, cg_iters=cg_iters, cg_damping=cg_damping,
                           fvp_sample_freq=fvp_sample_freq,
                           line_search_steps=line_search_steps,
                           line_search_decay=line_search_decay)
        return self

    @override(SafeAlgorithmConfig)
    def get_default_learner_class(self) -> type:
        from rllib_kfcpo.algorithms.cpo.cpo_torch_learner import CPOTorchLearner

        return CPOTorchLearner

    @override(SafeAlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        check_rules(self, CPO_RULES)


class CPO(SafeAlgorithm):
    """CPO on RLlib's new API stack (registered with Tune as ``CPO``)."""

    @classmethod
    @override(SafeAlgorithm)
    def get_default_config(cls) -> CPOConfig:
        return CPOConfig()

    @override(SafeAlgorithm)
    def _learner_timesteps(self) -> dict[str, Any]:
        # c = (Jc - d) / mean episode length needs the episode length (OmniSafe's EpLen).
        length = self.metrics.peek((ENV_RUNNER_RESULTS, EPISODE_LEN_MEAN), default=math.nan)
        return {**super()._learner_timesteps(), EPISODE_LEN_FOR_LEARNER: float(length)}

    @override(SafeAlgorithm)
    def _learner_update_kwargs(self) -> dict[str, Any]:
        # The learner gets the whole batch in one call; it takes the policy step on all of
        # it, then trains the critics on its own minibatches (num_epochs x minibatch_size).
        return {"num_epochs": 1}
