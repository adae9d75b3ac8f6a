"""KFCPO's direction manipulation as pure functions (see docs/algorithm.md, steps 4-6).

A direction is a sequence of tensors shaped like the policy parameters. The projection
works on the 2x2 Gram matrix of the reward and cost directions in the step's metric (the
K-FAC Fisher, from ``KFACPreconditioner.natural_directions``, or the Euclidean one for the
plain-gradient ablation, :func:`gram_matrix` of :func:`euclidean_inner`).
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


def multiplier_weights(multiplier: float) -> tuple[float, float]:
    """(w_reward, w_cost) = (1, lambda) / (1 + lambda): the blend of the two directions is
    then the natural gradient of the Lagrangian surrogate ``(A_r - lambda A_c) / (1 +
    lambda)`` (the ``pid`` margin schedule; lambda >= 0, infinite means cost only)."""
    if not multiplier >= 0.0:  # also refuses NaN
        raise ValueError(f"multiplier={multiplier!r} is invalid: it must be >= 0.")
    if math.isinf(multiplier):
        return 0.0, 1.0
    return 1.0 / (1.0 + multiplier), multiplier / (1.0 + multiplier)


def gram_matrix(directions: Sequence[Direction], inner: Inner) -> torch.Tensor:
    """``(K, K)`` matrix of ``inner(u_k, u_l)`` (for a metric given as a callable)."""
    count = len(directions)
    gram = torch.zeros(count, count, dtype=torch.float64)
    for k in range(count):
        for j in range(k, count):
            gram[k, j] = gram[j, k] = float(inner(directions[k], directions[j]))
    return gram


def combine_directions(
    gram: torch.Tensor | Sequence[Sequence[float]], w_reward: float, w_cost: float,
    projection: str = "harmful", normalize: bool = False,
) -> tuple[tuple[float, float], dict[str, float]]:
    """Coefficients of ``d = w_r n_r' + w_c n_c'`` in terms of ``(n_r, n_c)``.

    Every direction here is a combination of the two natural gradients, so the projection,
    the cosines and ``d'Fd`` follow from their 2x2 Fisher Gram matrix
    ``[[<n_r,n_r>, <n_r,n_c>], [<n_c,n_r>, <n_c,n_c>]]`` alone (no vector arithmetic, one
    host transfer). ``n_r`` ascends the reward surrogate, ``n_c`` descends the cost
    surrogate. ``harmful``: when they conflict (``<n_r, n_c> < 0``) and w_c >= 0.5 the
    reward direction is projected off n_c, ``n_r' = n_r - (<n_r,n_c>/<n_c,n_c>) n_c``;
    otherwise the cost direction off n_r. ``both``: each off the other's original.
    ``none``: no projection. ``normalize``: blend ``w_r n_r' / |n_r|_F + w_c n_c' / |n_c|_F``
    so the weights are the shares of the step whatever the scales of the two advantages
    (the projected directions keep their length relative to the originals).

    Returns:
        ``((c_r, c_c), info)`` with ``d = c_r n_r + c_c n_c`` and ``info``: ``cos_before``,
        ``cos_after`` (metric cosines of the pair before/after projection), ``conflict``,
        ``norm_reward``, ``norm_cost`` and ``quad`` (``d'Fd``).
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection={projection!r} is invalid: use one of {PROJECTIONS}.")
    g = torch.as_tensor(gram, dtype=torch.float64).tolist()
    rr, rc, cc = g[0][0], g[0][1], g[1][1]

    def inner(u: tuple[float, float], v: tuple[float, float]) -> float:
        return u[0] * (rr * v[0] + rc * v[1]) + u[1] * (rc * v[0] + cc * v[1])

    def cosine(u: tuple[float, float], v: tuple[float, float]) -> float:
        uu, vv = inner(u, u), inner(v, v)
        return inner(u, v) / math.sqrt(uu * vv) if uu > 0.0 and vv > 0.0 else 0.0

    reward, cost = (1.0, 0.0), (0.0, 1.0)
    conflict = rc < 0.0
    project_reward = conflict and cc > 1e-30 and (
        projection == "both" or (projection == "harmful" and w_cost >= 0.5))
    project_cost = conflict and rr > 1e-30 and (
        projection == "both" or (projection == "harmful" and w_cost < 0.5))
    r = (1.0, -rc / cc) if project_reward else reward
    c = (-rc / rr, 1.0) if project_cost else cost
    scale_r = 1.0 / math.sqrt(rr) if normalize and rr > 1e-30 else 1.0
    scale_c = 1.0 / math.sqrt(cc) if normalize and cc > 1e-30 else 1.0
    coeffs = (w_reward * scale_r * r[0] + w_cost * scale_c * c[0],
              w_reward * scale_r * r[1] + w_cost * scale_c * c[1])
    info = {
        "cos_before": cosine(reward, cost),
        "cos_after": cosine(r, c),
        "conflict": float(conflict),
        "norm_reward": math.sqrt(max(rr, 0.0)),
        "norm_cost": math.sqrt(max(cc, 0.0)),
        "quad": inner(coeffs, coeffs),
    }
    return coeffs, info


def blend(coeffs: tuple[float, float], n_reward: Direction,
          n_cost: Direction) -> list[torch.Tensor]:
    """``c_r n_r + c_c n_c`` tensor by tensor."""
    return [coeffs[0] * r + coeffs[1] * c for r, c in zip(n_reward, n_cost, strict=True)]


def trust_region_step_size(quad: float, *, max_kl: float, max_step: float) -> float:
    """a = min(max_step, sqrt(2 max_kl / d'Fd)), so 0.5 a^2 d'Fd <= max_kl.

    Returns 0.0 for a non-positive or non-finite ``quad`` (the caller skips the step).
    """
    if not (math.isfinite(quad) and quad > 0.0):
        return 0.0
    return min(float(max_step), math.sqrt(2.0 * float(max_kl) / quad))


def resize_diagonal_block(direction: Sequence[torch.Tensor], index: int, fisher: float,
                          step: float, *, max_kl: float, max_step: float) -> list[torch.Tensor]:
    """``direction`` with block ``index`` rescaled to its own trust region.

    For a block whose Fisher is ``fisher * I`` (a Gaussian's state-independent log-std:
    2 per dimension), the step ``step * d`` moves the block by ``a_b * d_b`` instead of
    ``step * d_b``, with ``a_b = min(max_step, sqrt(2 max_kl / (fisher |d_b|^2)))`` (so the
    block's own quadratic KL ``0.5 a_b^2 fisher |d_b|^2 <= max_kl``); every other block is
    unchanged. Returns ``direction`` itself when ``step`` or the block is zero.
    """
    block = direction[index]
    quad = float(fisher) * float(block.pow(2).sum())
    own = trust_region_step_size(quad, max_kl=max_kl, max_step=max_step)
    if own <= 0.0 or step <= 0.0:
        return list(direction)
    resized = list(direction)
    resized[index] = block * (own / step)
    return resized


def cost_requirement(w_cost: float) -> float:
    """kappa = 2 w_c - 1 in [-1, 1]: the share of the largest cost decrease the step must buy.

    ``w_c = 1`` (far over the limit): the step must decrease the cost as much as the trust
    region allows (pure cost descent); ``w_c = 0.5``: it must not increase the cost to first
    order (the reward direction with its harmful component removed); ``w_c = 0`` (far
    inside): it may give up as much cost as a pure reward step would (no constraint).
    """
    return 2.0 * float(w_cost) - 1.0


def solve_span_trust_region(
    gram: torch.Tensor | Sequence[Sequence[float]],
    reward_gain: Sequence[float],
    cost_gain: Sequence[float],
    radius: float,
    kappa: float,
) -> tuple[tuple[float, float], dict[str, float]]:
    """Exact solution of KFCPO's step subproblem in the span of ``(n_r, n_c)``.

    With ``x = u_r n_r + u_c n_c``, ``Q`` the 2x2 Fisher Gram of ``(n_r, n_c)``,
    ``a = (g_r.n_r, g_r.n_c)`` the first-order reward gains and ``b = (g_c.n_r, g_c.n_c)``
    the first-order cost decreases of the two directions (``g_c`` descends the cost)::

        maximise  a.u   subject to   u'Qu <= radius^2,   b.u >= kappa * radius * |b|_Q^-1

    where ``radius * |b|_Q^-1 = radius * sqrt(b'Q^-1 b)`` is the largest cost decrease in
    the trust region, so ``kappa`` in [-1, 1] (:func:`cost_requirement`) is the share of
    it the step must buy, and the problem is always feasible. In whitened coordinates
    ``v = L'u`` (``Q = LL'``) the trust region is a disc: the answer is the reward
    direction scaled to the disc when it buys enough cost decrease, otherwise the best
    point of the chord ``b~.v = h`` (the constraint active: the reward direction with the
    cost component it lacks put back, which at ``kappa = 0`` is the reward direction
    projected off the cost direction).

    Returns:
        ``((u_r, u_c), info)``; ``info``: ``active`` (1.0 when the cost requirement binds),
        ``reward_gain`` and ``cost_decrease`` (a.u, b.u), ``quad`` (u'Qu).
        ``((0, 0), ...)`` when the Gram is degenerate in both directions.
    """
    q = torch.as_tensor(gram, dtype=torch.float64)
    a_vec = torch.as_tensor(reward_gain, dtype=torch.float64)
    b_vec = torch.as_tensor(cost_gain, dtype=torch.float64)
    kappa = max(-1.0, min(1.0, float(kappa)))
    radius = float(radius)
    # A tiny ridge keeps the Cholesky factor defined when n_r and n_c are (nearly) parallel.
    ridge = 1e-12 * max(float(q.diagonal().max()), 1e-30)
    try:
        chol = torch.linalg.cholesky(q + ridge * torch.eye(2, dtype=torch.float64))
    except RuntimeError:
        return (0.0, 0.0), {"active": 0.0, "reward_gain": 0.0, "cost_decrease": 0.0,
                            "quad": 0.0}
    # Whitened gains: a.u = (L^-1 a).(L'u).
    a_w = torch.linalg.solve_triangular(chol, a_vec[:, None], upper=False)[:, 0]
    b_w = torch.linalg.solve_triangular(chol, b_vec[:, None], upper=False)[:, 0]
    a_norm, b_norm = float(a_w.norm()), float(b_w.norm())
    active = 0.0
    if b_norm <= 1e-30:  # no cost signal in the span: pure reward step
        v = radius * a_w / a_norm if a_norm > 1e-30 else torch.zeros(2, dtype=torch.float64)
    else:
        h = kappa * radius * b_norm
        v = radius * a_w / a_norm if a_norm > 1e-30 else None
        if v is None or float(b_w @ v) < h:
            active = 1.0
            b_hat = b_w / b_norm
            perp = torch.stack([-b_hat[1], b_hat[0]])
            along = h / b_norm  # = kappa * radius
            half_chord = math.sqrt(max(radius * radius - along * along, 0.0))
            side = 1.0 if float(a_w @ perp) >= 0.0 else -1.0
            v = along * b_hat + side * half_chord * perp
    u = torch.linalg.solve_triangular(chol.T, v[:, None], upper=True)[:, 0]
    coeffs = (float(u[0]), float(u[1]))
    info = {
        "active": active,
        "reward_gain": float(a_vec @ u),
        "cost_decrease": float(b_vec @ u),
        "quad": float(u @ q @ u),
    }
    return coeffs, info


def _output_tangents(network: torch.nn.Module, params: Sequence[torch.Tensor],
                     directions: Sequence[Direction],
                     obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``network(obs)`` and, per direction ``d``, the directional derivative ``J d`` of the
    output (one forward-mode Jacobian-vector product each, ``torch.func.jvp``).

    Parameters of ``network`` are looked up in ``params`` by identity; those missing from
    ``params`` get a zero tangent.
    """
    named = dict(network.named_parameters())
    primals = {name: p.detach() for name, p in named.items()}
    position = {id(p): i for i, p in enumerate(params)}
    output, tangents_out = None, []
    for direction in directions:
        tangents = {name: (direction[position[id(p)]].detach() if id(p) in position
                           else torch.zeros_like(p)) for name, p in named.items()}
        output, d_out = torch.func.jvp(
            lambda weights: torch.func.functional_call(network, weights, (obs,)),
            (primals,), (tangents,))
        tangents_out.append(d_out)
    if output is None:
        with torch.no_grad():
            output = network(obs)
    return output.detach(), tangents_out


def _row_weights(obs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """float64 weights of a mean over the real rows (all rows without a mask)."""
    rows = obs.shape[0]
    weights = (torch.ones(rows, dtype=torch.float64, device=obs.device) if mask is None
               else mask.detach().to(torch.float64))
    return weights / weights.sum().clamp_min(1e-12)


def _symmetric_gram(count: int, entry: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """``(count, count)`` float64 matrix with ``[k, j] = [j, k] = entry(k, j)``, ``k <= j``."""
    gram = torch.zeros(count, count, dtype=torch.float64)
    for k in range(count):
        for j in range(k, count):
            gram[k, j] = gram[j, k] = float(entry(k, j))
    return gram


def gaussian_fisher_gram(network: torch.nn.Module, log_std: torch.Tensor,
                         params: Sequence[torch.Tensor], directions: Sequence[Direction],
                         obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact Fisher Gram ``[<d_k, d_l>_F]`` of parameter directions of a diagonal Gaussian.

    For ``pi(a|s) = N(network(s), diag(exp(2 log_std)))`` the Fisher quadratic form of a
    direction ``d`` is ``E_s[ sum_i (J_mu d)_i^2 / sigma_i^2 ] + 2 |d_logstd|^2``, where
    ``J_mu d`` is the directional derivative of the mean: one forward-mode Jacobian-vector
    product per direction (``torch.func.jvp``), no Fisher matrix. ``0.5 d'Fd`` is the KL of a
    small step along ``d``, exactly to second order.

    Args:
        network: the mean network (its parameters are looked up in ``params`` by identity;
            parameters of ``network`` missing from ``params`` get a zero tangent).
        log_std: the state-independent log-std parameter (also in ``params``, or not moved).
        params: the parameters the directions are laid out for, in order.
        directions: ``K`` directions, each a tensor per entry of ``params``.
        obs: the states to average over, ``(rows, obs_dim)``.
        mask: optional ``(rows,)`` weights of real rows (a mean over them).

    Returns:
        The ``(K, K)`` float64 Gram matrix.
    """
    _, mean_tangents = _output_tangents(network, params, directions, obs)
    position = {id(p): i for i, p in enumerate(params)}
    std_tangents = [direction[position[id(log_std)]].detach() if id(log_std) in position
                    else torch.zeros_like(log_std) for direction in directions]
    inv_var = torch.exp(-2.0 * log_std.detach())
    weights = _row_weights(obs, mask)

    def entry(k: int, j: int) -> torch.Tensor:
        per_row = (mean_tangents[k] * mean_tangents[j] * inv_var).sum(-1).to(torch.float64)
        return (per_row * weights).sum() + 2.0 * (std_tangents[k] * std_tangents[j]).sum()

    return _symmetric_gram(len(directions), entry)


def categorical_fisher_gram(network: torch.nn.Module, params: Sequence[torch.Tensor],
                            directions: Sequence[Direction], obs: torch.Tensor,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact Fisher Gram ``[<d_k, d_l>_F]`` of parameter directions of a categorical policy.

    For ``pi(.|s) = softmax(network(s))`` the score w.r.t. the logits is ``onehot(a) - p``
    and its covariance, the Fisher of the softmax in logit space, is
    ``E_a[(e_a - p)(e_a - p)^T] = diag(p) - p p^T``. With ``u = J d`` and ``v = J d'`` the
    directional derivatives of the logits (one forward-mode JVP per direction), the Fisher
    inner product is ``E_s[ sum_i p_i u_i v_i - (p.u)(p.v) ]``; ``0.5 d'Fd`` is the KL of a
    small step along ``d``, exactly to second order.

    Args:
        network: the logits network (its parameters are looked up in ``params`` by
            identity; parameters of ``network`` missing from ``params`` get a zero tangent).
        params: the parameters the directions are laid out for, in order.
        directions: ``K`` directions, each a tensor per entry of ``params``.
        obs: the states to average over, ``(rows, obs_dim)``.
        mask: optional ``(rows,)`` weights of real rows (a mean over them).

    Returns:
        The ``(K, K)`` float64 Gram matrix.
    """
    logits, tangents = _output_tangents(network, params, directions, obs)
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    tangents = [t.to(torch.float64) for t in tangents]
    along_p = [(probs * t).sum(-1) for t in tangents]  # p.u per row
    weights = _row_weights(obs, mask)

    def entry(k: int, j: int) -> torch.Tensor:
        per_row = (probs * tangents[k] * tangents[j]).sum(-1) - along_p[k] * along_p[j]
        return (per_row * weights).sum()

    return _symmetric_gram(len(directions), entry)

