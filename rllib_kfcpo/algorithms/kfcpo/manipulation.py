"""KFCPO's direction manipulation as pure functions (see docs/algorithm.md, steps 4-6).

A direction is a sequence of tensors shaped like the policy parameters. An inner product
is a callable ``inner(u, v) -> scalar tensor``: the Fisher metric u^T F v for K-FAC, or
:func:`euclidean_inner` for the plain-gradient ablation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Direction = Sequence[torch.Tensor]
Inner = Callable[[Direction, Direction], torch.Tensor]

SCHEDULES = ("sigmoid", "hard")
PROJECTIONS = ("harmful", "both", "none")


def euclidean_inner(u: Direction, v: Direction) -> torch.Tensor:
    """Sum of elementwise products over all tensors."""
    return sum((a * b).sum() for a, b in zip(u, v, strict=True))


def cosine(u: Direction, v: Direction, inner: Inner) -> float:
    """Cosine of the angle between u and v in the metric ``inner`` (0 for a zero vector)."""
    uu, vv = float(inner(u, u)), float(inner(v, v))
    if uu <= 0.0 or vv <= 0.0:
        return 0.0
    return float(inner(u, v)) / math.sqrt(uu * vv)


def cost_margin(episode_cost: float, cost_limit: float) -> float:
    """Relative margin m = (d - Jc) / max(d, 1); m > 0 means inside the limit."""
    return (float(cost_limit) - float(episode_cost)) / max(float(cost_limit), 1.0)


def margin_weights(margin: float, *, schedule: str = "sigmoid", temperature: float = 0.1,
                   offset: float = 0.1) -> tuple[float, float]:
    """(w_reward, w_cost), summing to 1; w_cost grows as the margin shrinks.

    ``sigmoid``: w_c = sigmoid((offset - margin) / temperature), continuous and monotone.
    ``hard``: w_c = 1 if margin < offset else 0 (the hard-switch ablation).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"margin_schedule={schedule!r} is invalid: use one of {SCHEDULES}.")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"margin_temperature={temperature!r} is invalid: it must be > 0.")
    if schedule == "hard":
        w_cost = 1.0 if margin < offset else 0.0
    else:
        z = (offset - margin) / temperature
        # Numerically safe logistic for any |z|.
        w_cost = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return 1.0 - w_cost, w_cost


def remove_conflict(x: Direction, ref: Direction, inner: Inner) -> list[torch.Tensor]:
    """x without its component against ``ref`` when <x, ref> < 0; x unchanged otherwise."""
    dot = float(inner(x, ref))
    norm = float(inner(ref, ref))
    if dot >= 0.0 or norm <= 1e-30:
        return list(x)
    coeff = dot / norm
    return [a - coeff * b for a, b in zip(x, ref, strict=True)]


def combine_directions(
    g_reward: Direction, g_cost: Direction, w_reward: float, w_cost: float, inner: Inner,
    projection: str = "harmful",
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """d = w_r g_r' + w_c g_c' after the direction-sensitive projection.

    ``g_reward`` ascends the reward surrogate, ``g_cost`` descends the cost surrogate.
    ``harmful``: when w_c >= 0.5 the reward direction is projected off g_c, otherwise the
    cost direction is projected off g_r. ``both``: each off the other's original.
    ``none``: no projection.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection={projection!r} is invalid: use one of {PROJECTIONS}.")
    cos_before = cosine(g_reward, g_cost, inner)
    conflict = float(inner(g_reward, g_cost)) < 0.0
    r, c = list(g_reward), list(g_cost)
    if conflict and projection == "harmful":
        if w_cost >= 0.5:
            r = remove_conflict(g_reward, g_cost, inner)
        else:
            c = remove_conflict(g_cost, g_reward, inner)
    elif conflict and projection == "both":
        r = remove_conflict(g_reward, g_cost, inner)
        c = remove_conflict(g_cost, g_reward, inner)
    direction = [w_reward * a + w_cost * b for a, b in zip(r, c, strict=True)]
    info = {
        "cos_before": cos_before,
        "cos_after": cosine(r, c, inner),
        "conflict": float(conflict),
        "norm_reward": math.sqrt(max(float(inner(g_reward, g_reward)), 0.0)),
        "norm_cost": math.sqrt(max(float(inner(g_cost, g_cost)), 0.0)),
    }
    return direction, info


def trust_region_step_size(quad: float, *, max_kl: float, max_step: float) -> float:
    """a = min(max_step, sqrt(2 max_kl / d'Fd)), so 0.5 a^2 d'Fd <= max_kl.

    Returns 0.0 for a non-positive or non-finite ``quad`` (the caller skips the step).
    """
    if not (math.isfinite(quad) and quad > 0.0):
        return 0.0
    return min(float(max_step), math.sqrt(2.0 * float(max_kl) / quad))
