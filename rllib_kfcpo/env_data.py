"""Checks of the data an env hands back (cost, reward, observation), each one clear error.

A leaf module: the env wrappers (``rllib_kfcpo.envs``), the env-runner callbacks and the
learner connectors (``rllib_kfcpo.safe``) all use it, and it imports neither.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class MissingCostError(ValueError):
    """The env did not put the per-step cost into ``info["cost"]``."""


class NonFiniteEnvDataError(ValueError):
    """An env returned a NaN or infinite reward, observation or cost."""


def check_finite_step(obs: Any, reward: Any, *, where: str = "", step: int | None = None
                      ) -> None:
    """Raise :class:`NonFiniteEnvDataError` naming the env and step if reward/obs is not finite.

    Dict/tuple observations are checked leaf by leaf; non-numeric leaves are skipped.
    """
    at = f" at step {step} of the episode" if step is not None else ""
    if reward is not None and not math.isfinite(float(reward)):
        raise NonFiniteEnvDataError(
            f"The environment{where} returned a non-finite reward ({float(reward)!r}){at}. "
            "It was stopped before reaching the learners; check the env's reward function."
        )
    leaves = list(obs.values()) if isinstance(obs, dict) else (
        list(obs) if isinstance(obs, tuple) else [obs])
    for leaf in leaves:
        if isinstance(leaf, (dict, tuple)):
            check_finite_step(leaf, None, where=where, step=step)
            continue
        array = np.asarray(leaf)
        if array.dtype.kind not in "fc":
            continue
        if not np.isfinite(array).all():
            bad = np.flatnonzero(~np.isfinite(array.reshape(-1)))[:5].tolist()
            raise NonFiniteEnvDataError(
                f"The environment{where} returned a non-finite observation{at} (entries "
                f"{bad}). It was stopped before reaching the networks; check the env's "
                "observation function (or its physics: a diverged simulation gives NaN)."
            )


def read_step_cost(info: Any, *, where: str = "") -> float:
    """Return ``info["cost"]`` as a float, or raise one clear error saying what is wrong."""
    if not isinstance(info, dict) or "cost" not in info:
        keys = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise MissingCostError(
            f"The environment{where} returned no cost: safe algorithms need the per-step "
            f"cost in info['cost'] after every step, but the info had keys {keys}. Use a "
            "Safety-Gymnasium task id (e.g. 'SafetyPointGoal1-v0') or make your env's "
            "step() return info={'cost': float(c), ...}."
        )
    cost = float(info["cost"])
    if not math.isfinite(cost):
        raise NonFiniteEnvDataError(
            f"The environment{where} returned a non-finite cost {cost!r} in info['cost']. "
            "Costs must be finite numbers; check the env's cost function."
        )
    return cost
