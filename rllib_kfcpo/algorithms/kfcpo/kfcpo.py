"""KFCPO: Kronecker-Factored approximated Constrained Policy Optimization.

The policy moves along K-FAC natural gradients: a reward direction and a cost direction
under the same curvature, weighted by the margin to the cost limit, with the conflicting
component of the harmful direction projected away, scaled to a trust region, and rolled
back per minibatch when the real KL to the behaviour policy leaves the target. The
critics are trained with Adam on the same minibatches. See docs/algorithm.md for every
formula, default and the reason behind it.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.utils.annotations import override

from rllib_kfcpo.safe.algorithm import SafeAlgorithm
from rllib_kfcpo.safe.config import SafeAlgorithmConfig
from rllib_kfcpo.safe.rules import (
    Rule,
    boolean,
    check_rules,
    integer,
    number,
    one_of,
    optional,
    sequence_of,
)

MARGIN_SCHEDULES = ("sigmoid", "hard", "pid")
STEP_RULES = ("blend", "span")
STEP_METRICS = ("kfac", "exact")
PROJECTIONS = ("harmful", "both", "none")
GRADIENT_AVERAGING = ("none", "cost", "both")
ROLLBACK_KL_ROWS = ("minibatch", "held_out")

#: name -> (default, one-line description); the single place each KFCPO setting is documented.
KFCPO_SETTINGS: dict[str, tuple[Any, str]] = {
    "use_kfac": (True, "Precondition with K-FAC (False: plain gradients, Euclidean metric)."),
    "critic_minibatch_size": (None, "Rows per critic Adam step: each policy minibatch is "
                                    "cut into slices of this size, one critic step each "
                                    "(None: one critic step per policy minibatch)."),
    "gradient_averaging": ("none", "Which policy gradients are replaced by the running mean "
                                   "of this iteration's minibatch gradients so far before "
                                   "preconditioning: 'none', 'cost' (g_c) or 'both' (g_r "
                                   "and g_c); less minibatch noise, and from the second "
                                   "epoch on close to the whole batch's gradient."),
    "surrogate_clip": (None, "PPO's clip on the policy gradients: a row whose ratio "
                             "pi / pi_old has already left [1 - eps, 1 + eps] on the side "
                             "its (reward or cost) advantage favours adds nothing to g_r "
                             "or g_c, as in the gradient of PPO's clipped surrogate, so "
                             "the natural steps of later minibatches stop pushing the "
                             "rows earlier steps already moved (None: off, the plain "
                             "surrogates)."),
    "kfac_damping": (1e-2, "Damping added to the Kronecker eigenvalue products."),
    "kfac_damping_relative": (False, "Scale kfac_damping by each block's mean curvature "
                                     "(mean Kronecker eigenvalue product), so one value "
                                     "damps every layer alike."),
    "kfac_decay": (0.95, "EMA decay of the running Kronecker factors."),
    "kfac_burn_in": (10, "Factor updates averaged plainly (1/k) before the EMA starts."),
    "kfac_inv_update_steps": (4, "Eigendecompose the factors every N minibatch steps after "
                                 "the burn-in (1: every step)."),
    "trust_region_kl": (2e-3, "Bound on the quadratic KL 0.5 a^2 d'Fd of one minibatch step."),
    "adaptive_trust_region": (False, "Divide trust_region_kl by the running real/quadratic "
                                     "KL ratio of kept steps, so steps are sized to the real "
                                     "KL."),
    "log_std_trust_region_kl": (None, "Own trust region of a Gaussian's log-std: its part of "
                                      "the step is sized to this KL bound (exact for the "
                                      "log-std alone), whatever the mean's step (None: it "
                                      "moves with the joint step, as the natural gradient "
                                      "puts it)."),
    "step_metric": ("kfac", "Fisher metric of steps 5-6 on span(n_r, n_c): 'kfac' (the K-FAC "
                            "Gram) or 'exact' (the exact Fisher of the policy, Gaussian or "
                            "categorical, in the two directions, by two Jacobian-vector "
                            "products)."),
    "step_rule": ("blend", "'blend' (w_r n_r' + w_c n_c', scaled to the trust region) or "
                           "'span' (exact best reward step in span(n_r, n_c) that buys the "
                           "share 2 w_c - 1 of the largest cost decrease)."),
    "max_step_size": (1.0, "Upper bound on the step size a along the combined direction."),
    "margin_schedule": ("sigmoid", "'sigmoid' (smooth margin weights), 'hard' switch, or "
                                   "'pid' (w_c = lambda / (1 + lambda) with lambda a PID "
                                   "controller's output on Jc - d (1 - margin_offset), "
                                   "OmniSafe CPPOPID's controller; gains margin_pid_gains)."),
    "margin_pid_gains": ((0.1, 0.01, 0.01), "(kp, ki, kd) of the 'pid' margin schedule "
                                             "(OmniSafe CPPOPID's and PPOPIDLag's defaults; "
                                             "its other settings are theirs too)."),
    "margin_multiplier_max": (None, "Anti-windup cap of the 'pid' margin schedule: its "
                                    "integral and lambda stay <= this (w_c <= cap / (1 + "
                                    "cap)); None: no cap, as OmniSafe."),
    "margin_pid_init": (None, "Initial integral (so lambda) of the 'pid' margin schedule's "
                              "controller: a cost-first start (e.g. 20: w_c ~0.95 from "
                              "the first iteration) that unwinds at ki (Jc - set-point) "
                              "per iteration once Jc is below the set-point; None: "
                              "OmniSafe's 1e-3."),
    "margin_pid_unwind_gain": (None, "Integral gain of the 'pid' margin schedule while Jc is "
                                     "below the set-point (the integral then falls by this "
                                     "times the shortfall per iteration), so a multiplier "
                                     "wound up early lets go of the reward sooner; None: "
                                     "margin_pid_gains' ki on both sides, as OmniSafe."),
    "margin_temperature": (0.1, "Temperature of the sigmoid margin weights."),
    "margin_offset": (0.1, "Margin at which reward and cost directions weigh equally."),
    "margin_cost_ema": (1.0, "Weight of the newest iteration's Jc in the margin's EMA of "
                             "Jc (1.0: no smoothing)."),
    "margin_integral_gain": (0.0, "Integral term of the margin: each iteration adds this "
                                  "times (margin_offset - m) to a sum (clamped to +-1) that "
                                  "is subtracted from the margin m, so a lasting excess "
                                  "raises w_c until Jc comes down to d (1 - margin_offset) "
                                  "(0: off, the margin alone)."),
    "direction_momentum": (0.0, "EMA weight beta of the earlier natural directions: from "
                                "step 4 on, n_r and n_c are m <- beta m + (1 - beta) n, "
                                "kept across minibatches and iterations (checkpointed), "
                                "so a step follows what several minibatches agree on "
                                "rather than one minibatch's noise (0: off)."),
    "projection": ("harmful", "'harmful', 'both' (PCGrad-like) or 'none' (ablation)."),
    "normalize_directions": (False, "Blend unit-Fisher-norm directions (weights = shares)."),
    "kl_rollback": (True, "Undo a minibatch step whose real KL exceeds target_kl."),
    "rollback_backtracks": (3, "Retries of an undone step at half the size before freezing."),
    "target_kl": (0.02, "KL(behaviour || current) bound of the rollback, per iteration."),
    "rollback_kl_rows": ("minibatch", "Rows on which the rollback's KL and the kept step's "
                                      "KL (kl_of_step) are measured: 'minibatch' (the "
                                      "step's own rows) or 'held_out' (the rows of this "
                                      "iteration seen so far that are not in the "
                                      "minibatch; the minibatch itself while there are "
                                      "none): a step fits its own rows, so the KL there "
                                      "overstates how far the policy moved."),
    "held_out_improvement": (False, "With rollback_kl_rows='held_out': also undo (without "
                                    "freezing) a step that does not raise the "
                                    "margin-weighted surrogate w_r L_r - w_c L_c on the "
                                    "held-out rows, i.e. a step along its own minibatch's "
                                    "noise."),
}


#: Settings of the 'pid' margin schedule's controller (None: unused), refused with the other
#: schedules; each with what it does, for the error.
PID_ONLY_SETTINGS = {
    "margin_multiplier_max": "the cap bounds the 'pid' schedule's multiplier",
    "margin_pid_init": "it starts the 'pid' schedule's multiplier",
    "margin_pid_unwind_gain": "it is the 'pid' schedule's integral gain below the set-point",
}

#: KFCPO's settings' rules (rllib_kfcpo.safe.rules); every key of KFCPO_SETTINGS has one.
_POSITIVE = "a finite number > 0"
KFCPO_RULES = (
    Rule("use_kfac", boolean, "True or False"),
    Rule("critic_minibatch_size", optional(integer(1)), "None or an integer >= 1"),
    Rule("gradient_averaging", one_of(GRADIENT_AVERAGING), f"one of {GRADIENT_AVERAGING}"),
    Rule("surrogate_clip", optional(number(0, 1, low_open=True, high_open=True)),
         "None or a number in (0, 1) (PPO's clip_param: typical 0.1..0.3)"),
    Rule("kfac_damping", number(0, low_open=True), f"{_POSITIVE} (typical 1e-3..1e-1)"),
    Rule("kfac_damping_relative", boolean, "True or False"),
    Rule("kfac_decay", number(0, 1, low_open=True, high_open=True), "in (0, 1)"),
    Rule("kfac_burn_in", integer(0), "an integer >= 0"),
    Rule("kfac_inv_update_steps", integer(1), "an integer >= 1"),
    Rule("trust_region_kl", number(0, low_open=True), _POSITIVE),
    Rule("adaptive_trust_region", boolean, "True or False"),
    Rule("log_std_trust_region_kl", optional(number(0, low_open=True)), f"None or {_POSITIVE}"),
    Rule("step_metric", one_of(STEP_METRICS), f"one of {STEP_METRICS}"),
    Rule("step_rule", one_of(STEP_RULES), f"one of {STEP_RULES}"),
    Rule("max_step_size", number(0, low_open=True), _POSITIVE),
    Rule("margin_schedule", one_of(MARGIN_SCHEDULES), f"one of {MARGIN_SCHEDULES}"),
    Rule("margin_temperature", number(0, low_open=True), _POSITIVE),
    Rule("margin_offset", number(), "a finite number"),
    Rule("margin_cost_ema", number(0, 1, low_open=True), "in (0, 1]"),
    Rule("margin_integral_gain", number(0), "a finite number >= 0"),
    Rule("margin_pid_gains", sequence_of(number(0), 3),
         "a list of three finite numbers >= 0 (kp, ki, kd)"),
    Rule("margin_multiplier_max", optional(number(0, low_open=True)), f"None or {_POSITIVE}"),
    Rule("margin_pid_init", optional(number(0)), "None or a finite number >= 0"),
    Rule("margin_pid_unwind_gain", optional(number(0)), "None or a finite number >= 0"),
    Rule("direction_momentum", number(0, 1, high_open=True), "in [0, 1)"),
    Rule("projection", one_of(PROJECTIONS), f"one of {PROJECTIONS}"),
    Rule("normalize_directions", boolean, "True or False"),
    Rule("kl_rollback", boolean, "True or False"),
    Rule("rollback_backtracks", integer(0, 20), "an integer in [0, 20]"),
    Rule("target_kl", number(0, low_open=True), _POSITIVE),
    Rule("rollback_kl_rows", one_of(ROLLBACK_KL_ROWS), f"one of {ROLLBACK_KL_ROWS}"),
    Rule("held_out_improvement", boolean, "True or False"),
)


class KFCPOConfig(SafeAlgorithmConfig):
    """Config of :class:`KFCPO`. ``training()`` takes every key of ``KFCPO_SETTINGS``.

    The policy moves by natural-gradient steps (no optimizer): ``lr`` and ``grad_clip`` (by
    global norm) act on the reward and cost critics' Adam only. PPO's loss settings
    (``clip_param``, ``entropy_coeff``, KL penalty, value clipping) and other
    ``grad_clip_by`` modes do not apply and are refused when set.
    """

    UNUSED_INHERITED_SETTINGS = (
        *SafeAlgorithmConfig.UNUSED_INHERITED_SETTINGS,
        "clip_param", "entropy_coeff", "entropy_coeff_schedule", "grad_clip_by",
    )

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or KFCPO)
        for name, (default, _) in KFCPO_SETTINGS.items():
            setattr(self, name, default)
        # A natural-gradient step per minibatch: fewer, larger minibatches than PPO.
        self.num_epochs = 10
        self.minibatch_size = 2000

    @override(SafeAlgorithmConfig)
    def training(self, **kwargs: Any) -> KFCPOConfig:
        """Sets KFCPO settings (see ``KFCPO_SETTINGS``), then the shared/PPO ones."""
        self._set_provided(**{name: kwargs.pop(name) for name in KFCPO_SETTINGS
                              if name in kwargs})
        super().training(**kwargs)
        return self

    @override(SafeAlgorithmConfig)
    def get_default_learner_class(self) -> type:
        from rllib_kfcpo.algorithms.kfcpo.kfcpo_torch_learner import KFCPOTorchLearner

        return KFCPOTorchLearner

    @override(SafeAlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        check_rules(self, KFCPO_RULES)
        if self.margin_schedule == "pid" and self.margin_integral_gain > 0:
            raise ValueError(
                f"training(margin_integral_gain={self.margin_integral_gain!r}) is invalid "
                "with margin_schedule='pid': the PID controller has its own integral term "
                "(margin_pid_gains); set margin_integral_gain=0.0 or use the 'sigmoid' "
                "schedule.")
        for name, role in PID_ONLY_SETTINGS.items():
            value = getattr(self, name)
            if value is not None and self.margin_schedule != "pid":
                raise ValueError(
                    f"training({name}={value!r}) is invalid with margin_schedule="
                    f"{self.margin_schedule!r}: {role}; set margin_schedule='pid' or "
                    f"{name}=None.")
        if self.held_out_improvement and self.rollback_kl_rows != "held_out":
            raise ValueError(
                "training(held_out_improvement=True) is invalid with rollback_kl_rows="
                f"{self.rollback_kl_rows!r}: the improvement is measured on the held-out "
                "rows; set rollback_kl_rows='held_out' or held_out_improvement=False.")


class KFCPO(SafeAlgorithm):
    """KFCPO on RLlib's new API stack (registered with Tune as ``KFCPO``)."""

    @classmethod
    @override(SafeAlgorithm)
    def get_default_config(cls) -> KFCPOConfig:
        return KFCPOConfig()
