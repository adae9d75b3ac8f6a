"""A Lagrange multiplier for the constraint Jc <= d (plain torch, RLlib-free).

OmniSafe's rule: lambda is a parameter trained by Adam on the loss
``-lambda * (Jc - d)`` and projected back to ``[0, upper_bound]`` after every step, so
it grows while the episode cost exceeds the limit and shrinks towards 0 while it is
below. Updated once per training iteration from the windowed episode cost.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class LagrangeMultiplier:
    """Projected Adam ascent on lambda for the constraint ``Jc <= cost_limit``."""

    def __init__(self, init: float = 1e-3, lr: float = 0.035, upper_bound: float = math.inf):
        for name, value, ok in (
            ("lagrangian_multiplier_init", init, init >= 0 and math.isfinite(init)),
            ("lagrangian_multiplier_lr", lr, lr > 0 and math.isfinite(lr)),
            ("lagrangian_upper_bound", upper_bound, upper_bound > 0),
        ):
            if not ok:
                raise ValueError(f"{name}={value!r} is invalid: it must be a finite number "
                                 f"{'>= 0' if name.endswith('init') else '> 0'}.")
        self.upper_bound = upper_bound
        self.param = torch.nn.Parameter(torch.tensor(float(init)))
        self.optimizer = torch.optim.Adam([self.param], lr=lr)

    @property
    def value(self) -> float:
        """The current multiplier lambda >= 0."""
        return float(self.param.detach())

    def update(self, episode_cost: float, cost_limit: float) -> float:
        """One projected Adam step on ``-lambda * (Jc - d)``; returns the new lambda."""
        if not math.isfinite(episode_cost):
            return self.value
        self.optimizer.zero_grad()
        loss = -self.param * (float(episode_cost) - float(cost_limit))
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.param.clamp_(0.0, self.upper_bound)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """Multiplier value and Adam state."""
        return {"value": self.value, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""
        with torch.no_grad():
            self.param.fill_(float(state["value"]))
        self.optimizer.load_state_dict(state["optimizer"])
