"""A PID-controlled Lagrange multiplier for the constraint Jc <= d (pure python, RLlib-free).

Stooke, Achiam & Abbeel (2020), "Responsive Safety in Reinforcement Learning by PID
Lagrangian Methods", as OmniSafe's ``PIDLagrangian`` (``omnisafe/common/pid_lagrange.py``,
used by CPPOPID) computes it. Once per iteration, from the windowed episode cost Jc:

1. ``delta = Jc - d``;
2. integral: ``I <- max(0, I + ki * delta)`` (clamped to [0, 1] under ``diff_norm``); with
   ``ki_unwind`` set (ours; None: ``ki``, OmniSafe's), ``ki_unwind`` replaces ``ki`` while
   ``delta < 0``;
3. proportional: ``P <- alpha_p * P + (1 - alpha_p) * delta`` (EMA of the error);
4. derivative: ``C <- alpha_d * C + (1 - alpha_d) * Jc`` (EMA of the cost) and
   ``D = max(0, C - C_{k - delay})`` with ``C_{k - delay}`` the oldest of the last
   ``d_delay`` smoothed costs (0 before any);
5. ``lambda = max(0, kp * P + I + kd * D)``; under ``diff_norm`` also ``<= 1``; with
   neither ``sum_norm`` nor ``diff_norm`` also ``<= penalty_max``;
6. the smoothed cost C is pushed into the delay line.

``multiplier_max`` (ours, default infinite: OmniSafe's controller) is an anti-windup
clamp: the integral and lambda both stay in [0, multiplier_max], so a long excess cannot
store more multiplier than the cap, and the integral unwinds from the cap, not from the
level the excess would have built.

``ki_unwind`` (ours, default None: the symmetric integral of OmniSafe) lets the integral
fall faster below the limit than it rises above it: a multiplier wound up by a long early
excess then lets go of the reward sooner once the cost is down: ``I / (ki_unwind |delta|)``
iterations where ``ki`` alone takes ``I / (ki |delta|)``. The price is a bias: the integral is
steady when ``ki`` times the excess equals ``ki_unwind`` times the shortfall, so the cost
may sit above ``d`` for longer than below it.

The integral starts at ``init`` (OmniSafe's ``lagrangian_multiplier_init``), lambda at 0
until the first update. See docs/algorithm.md, "PPO-PID-Lagrangian".
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

#: Keys of :meth:`PIDLagrangian.state_dict`.
PID_STATE_KEYS = ("integral", "delta_p", "cost_d", "cost_ds", "value")


class PIDLagrangian:
    """PID controller on ``Jc - d`` whose output is the multiplier lambda >= 0."""

    def __init__(self, *, kp: float = 0.1, ki: float = 0.01, kd: float = 0.01,
                 d_delay: int = 10, delta_p_ema_alpha: float = 0.95,
                 delta_d_ema_alpha: float = 0.95, sum_norm: bool = True,
                 diff_norm: bool = False, penalty_max: float = 100.0,
                 init: float = 1e-3, multiplier_max: float = math.inf,
                 ki_unwind: float | None = None) -> None:
        for name, value in (("pid_kp", kp), ("pid_ki", ki), ("pid_kd", kd),
                            ("lagrangian_multiplier_init", init),
                            ("ki_unwind", ki if ki_unwind is None else ki_unwind)):
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid: it must be a finite number "
                                 ">= 0.")
        if isinstance(d_delay, bool) or not isinstance(d_delay, int) or d_delay < 1:
            raise ValueError(f"pid_d_delay={d_delay!r} is invalid: it must be an integer >= 1.")
        for name, value in (("pid_delta_p_ema_alpha", delta_p_ema_alpha),
                            ("pid_delta_d_ema_alpha", delta_d_ema_alpha)):
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} is invalid: it must be in [0, 1).")
        if not _is_real(penalty_max) or math.isnan(penalty_max) or penalty_max <= 0:
            raise ValueError(f"penalty_max={penalty_max!r} is invalid: it must be a number > 0.")
        if not _is_real(multiplier_max) or math.isnan(multiplier_max) or multiplier_max <= 0:
            raise ValueError(f"multiplier_max={multiplier_max!r} is invalid: it must be a "
                             "number > 0 (math.inf: no cap).")
        self.multiplier_max = float(multiplier_max)
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.ki_unwind = self.ki if ki_unwind is None else float(ki_unwind)
        self.delta_p_ema_alpha = float(delta_p_ema_alpha)
        self.delta_d_ema_alpha = float(delta_d_ema_alpha)
        self.sum_norm, self.diff_norm = bool(sum_norm), bool(diff_norm)
        self.penalty_max = float(penalty_max)
        self.integral = float(init)
        self.delta_p = 0.0
        self.cost_d = 0.0
        self.cost_ds: deque[float] = deque([0.0], maxlen=d_delay)
        self._value = 0.0

    @property
    def value(self) -> float:
        """The current multiplier lambda >= 0 (0 before the first update)."""
        return self._value

    def update(self, episode_cost: float, cost_limit: float) -> float:
        """One PID step from the windowed episode cost Jc; returns the new lambda.

        A non-finite Jc (no episode finished yet) leaves every state unchanged.
        """
        if not math.isfinite(episode_cost):
            return self._value
        jc = float(episode_cost)
        delta = jc - float(cost_limit)
        gain = self.ki if delta >= 0 else self.ki_unwind
        self.integral = min(max(0.0, self.integral + delta * gain), self.multiplier_max)
        if self.diff_norm:
            self.integral = min(1.0, self.integral)
        a_p = self.delta_p_ema_alpha
        self.delta_p = a_p * self.delta_p + (1.0 - a_p) * delta
        a_d = self.delta_d_ema_alpha
        self.cost_d = a_d * self.cost_d + (1.0 - a_d) * jc
        derivative = max(0.0, self.cost_d - self.cost_ds[0])
        value = max(0.0, self.kp * self.delta_p + self.integral + self.kd * derivative)
        if self.diff_norm:
            value = min(1.0, value)
        if not (self.diff_norm or self.sum_norm):
            value = min(value, self.penalty_max)
        value = min(value, self.multiplier_max)
        self._value = value
        self.cost_ds.append(self.cost_d)
        return value

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`update` reads (plain floats and a list)."""
        return {"integral": self.integral, "delta_p": self.delta_p, "cost_d": self.cost_d,
                "cost_ds": list(self.cost_ds), "value": self._value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (the gains stay the configured ones)."""
        missing = [k for k in PID_STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"PID-Lagrangian state lacks {missing}: it was not written by "
                             "PIDLagrangian.state_dict().")
        self.integral = float(state["integral"])
        self.delta_p = float(state["delta_p"])
        self.cost_d = float(state["cost_d"])
        self.cost_ds = deque((float(c) for c in state["cost_ds"]), maxlen=self.cost_ds.maxlen)
        self._value = float(state["value"])


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
