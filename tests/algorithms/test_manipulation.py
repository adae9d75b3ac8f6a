"""KFCPO's direction manipulation (margin weights, projection, trust region) in isolation.

The Fisher metric here is an explicit random SPD matrix, so every expected value is
computed independently with dense linear algebra.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rllib_kfcpo.algorithms.kfcpo.manipulation import (
    blend,
    combine_directions,
    cost_margin,
    euclidean_inner,
    gram_matrix,
    margin_weights,
    multiplier_weights,
    resize_diagonal_block,
    trust_region_step_size,
)

F64 = torch.float64


def spd_metric(n: int, seed: int) -> tuple[torch.Tensor, callable]:
    """A random SPD F and inner(u, v) = u^T F v over directions split into two tensors."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    fisher = m @ m.T + 0.1 * torch.eye(n, dtype=F64)

    def inner(u, v):
        return torch.cat([t.reshape(-1) for t in u]) @ fisher @ torch.cat(
            [t.reshape(-1) for t in v])

    return fisher, inner


def as_direction(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[:6].reshape(2, 3), x[6:]]


def flat(d) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d])


def combined(r, c, w_reward, w_cost, inner, projection="harmful", normalize=False):
    """The learner's path: Gram matrix -> coefficients -> blended direction (flat)."""
    gram = gram_matrix([as_direction(r), as_direction(c)], inner)
    coeffs, info = combine_directions(gram, w_reward, w_cost, projection=projection,
                                      normalize=normalize)
    return flat(blend(coeffs, as_direction(r), as_direction(c))), info


def conflicting_pair(fisher, seed):
    g = torch.Generator().manual_seed(seed)
    r, c = torch.randn(8, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)
    return (r, -c) if float(r @ fisher @ c) >= 0 else (r, c)


@pytest.mark.parametrize("seed", range(20))
def test_projection_removes_exactly_the_conflicting_component(seed):
    fisher, inner = spd_metric(8, seed)
    r, c = conflicting_pair(fisher, 100 + seed)
    # w_c = 0.5 gives cost the priority: the reward direction is the one projected.
    d, info = combined(r, c, 0.5, 0.5, inner)
    # Brute force: r' = r - (r^T F c / c^T F c) c, d = 0.5 r' + 0.5 c.
    r_proj = r - (r @ fisher @ c) / (c @ fisher @ c) * c
    torch.testing.assert_close(d, 0.5 * r_proj + 0.5 * c)
    assert abs(float(r_proj @ fisher @ c)) < 1e-9  # F-orthogonal after projection
    assert info["cos_before"] == pytest.approx(
        float(r @ fisher @ c) / math.sqrt(float(r @ fisher @ r) * float(c @ fisher @ c)))
    assert info["cos_after"] == pytest.approx(0.0, abs=1e-9)
    assert info["quad"] == pytest.approx(float(d @ fisher @ d))  # d'Fd from the Gram alone


@pytest.mark.parametrize("seed", range(10))
def test_non_conflicting_directions_are_untouched(seed):
    fisher, inner = spd_metric(8, seed)
    r, c = conflicting_pair(fisher, 200 + seed)
    c = -c  # now <r, c>_F > 0
    for projection in ("harmful", "both", "none"):
        d, info = combined(r, c, 0.3, 0.7, inner, projection=projection)
        torch.testing.assert_close(d, 0.3 * r + 0.7 * c)
        assert info["conflict"] == 0.0
        assert info["quad"] == pytest.approx(float(d @ fisher @ d))


@pytest.mark.parametrize("w_cost", [0.2, 0.8])
def test_harmful_projection_picks_the_direction_by_margin(w_cost):
    fisher, inner = spd_metric(8, 3)
    r, c = conflicting_pair(fisher, 7)
    d, info = combined(r, c, 1 - w_cost, w_cost, inner)
    if w_cost >= 0.5:  # near/over the limit: the reward direction must not raise cost
        r_p, c_p = r - (r @ fisher @ c) / (c @ fisher @ c) * c, c
    else:  # well inside: the cost direction must not lower reward
        r_p, c_p = r, c - (c @ fisher @ r) / (r @ fisher @ r) * r
    torch.testing.assert_close(d, (1 - w_cost) * r_p + w_cost * c_p)
    assert info["conflict"] == 1.0
    assert info["cos_before"] < 0 and info["cos_after"] >= -1e-9
    both, _ = combined(r, c, 0.5, 0.5, inner, projection="both")
    assert float(both @ fisher @ r) >= -1e-9 and float(both @ fisher @ c) >= -1e-9
    none, _ = combined(r, c, 0.5, 0.5, inner, projection="none")
    torch.testing.assert_close(none, 0.5 * r + 0.5 * c)


@pytest.mark.parametrize("w_cost", [0.2, 0.8])
def test_normalized_blend_uses_unit_length_directions(w_cost):
    fisher, inner = spd_metric(8, 5)
    r, c = conflicting_pair(fisher, 11)
    c = 30.0 * c  # a much longer cost direction must not dominate the blend
    norm_r, norm_c = float(r @ fisher @ r) ** 0.5, float(c @ fisher @ c) ** 0.5
    d, info = combined(r, c, 1 - w_cost, w_cost, inner, normalize=True)
    if w_cost >= 0.5:
        r_p, c_p = r - (r @ fisher @ c) / (c @ fisher @ c) * c, c
    else:
        r_p, c_p = r, c - (c @ fisher @ r) / (r @ fisher @ r) * r
    torch.testing.assert_close(d, (1 - w_cost) * r_p / norm_r + w_cost * c_p / norm_c)
    assert info["quad"] == pytest.approx(float(d @ fisher @ d))
    # Without normalisation the long direction takes over.
    plain, _ = combined(r, c, 1 - w_cost, w_cost, inner)
    torch.testing.assert_close(plain, (1 - w_cost) * r_p + w_cost * c_p)


def test_projection_rejects_unknown_mode():
    with pytest.raises(ValueError, match="projection"):
        combine_directions([[1.0, 0.0], [0.0, 1.0]], 0.5, 0.5, projection="pcgrad")


def test_margin_weights_are_continuous_monotone_and_sum_to_one():
    margins = np.linspace(-3, 3, 6001)
    w_cost = np.array([margin_weights(m, temperature=0.1, offset=0.1)[1] for m in margins])
    w_reward = np.array([margin_weights(m, temperature=0.1, offset=0.1)[0] for m in margins])
    np.testing.assert_allclose(w_cost + w_reward, 1.0)
    assert np.all(np.diff(w_cost) <= 0)  # less cost weight as the margin grows
    assert np.max(np.abs(np.diff(w_cost))) < 0.0026  # Lipschitz 1/(4T) * step = 0.0025
    assert margin_weights(0.1, temperature=0.1, offset=0.1) == (0.5, 0.5)
    assert margin_weights(-50.0)[1] == 1.0 and margin_weights(50.0)[1] == pytest.approx(0.0)
    # The hard-switch ablation jumps at the offset.
    assert margin_weights(0.09, schedule="hard")[1] == 1.0
    assert margin_weights(0.11, schedule="hard")[1] == 0.0


@pytest.mark.parametrize("lam", [0.0, 1e-3, 0.5, 1.0, 7.0, 1e9])
def test_multiplier_weights_blend_is_the_lagrangian_surrogate(lam):
    """(w_r, w_c) = (1, lambda) / (1 + lambda): the blend of the gradients of A_r and -A_c
    equals the gradient of (A_r - lambda A_c) / (1 + lambda), checked by autograd."""
    w_reward, w_cost = multiplier_weights(lam)
    assert w_reward + w_cost == pytest.approx(1.0)
    theta = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64, requires_grad=True)
    reward, cost = (theta**2).sum() + theta[0], torch.sin(theta).sum()
    g_r, g_c = torch.autograd.grad(reward, theta, retain_graph=True)[0], -torch.autograd.grad(
        cost, theta, retain_graph=True)[0]
    (lagrangian,) = torch.autograd.grad((reward - lam * cost) / (1.0 + lam), theta)
    torch.testing.assert_close(w_reward * g_r + w_cost * g_c, lagrangian)


def test_multiplier_weights_limits_and_bad_input():
    assert multiplier_weights(math.inf) == (0.0, 1.0)
    for bad in (-0.1, math.nan):
        with pytest.raises(ValueError, match="must be >= 0"):
            multiplier_weights(bad)


def test_cost_margin_is_relative_to_the_limit():
    assert cost_margin(20.0, 25.0) == pytest.approx(0.2)
    assert cost_margin(30.0, 25.0) == pytest.approx(-0.2)
    assert cost_margin(0.5, 0.0) == pytest.approx(-0.5)  # limit 0 does not divide by 0


@pytest.mark.parametrize("bad", [{"schedule": "linear"}, {"temperature": 0.0}])
def test_margin_weights_reject_bad_settings(bad):
    with pytest.raises(ValueError, match="invalid"):
        margin_weights(0.0, **bad)


def test_trust_region_step_bounds_the_quadratic_kl():
    for quad in (1e-6, 0.01, 1.0, 1e4):
        a = trust_region_step_size(quad, max_kl=2e-3, max_step=1.0)
        assert 0.5 * a * a * quad <= 2e-3 * (1 + 1e-12)
        assert a == pytest.approx(min(1.0, math.sqrt(2 * 2e-3 / quad)))
    assert trust_region_step_size(0.0, max_kl=1e-3, max_step=1.0) == 0.0
    assert trust_region_step_size(float("nan"), max_kl=1e-3, max_step=1.0) == 0.0


def test_euclidean_inner_matches_dot():
    x, y = torch.randn(8, dtype=F64), torch.randn(8, dtype=F64)
    assert float(euclidean_inner(as_direction(x), as_direction(y))) == pytest.approx(
        float(x @ y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resized_diagonal_block_has_its_own_kl_and_the_rest_is_untouched(seed):
    """A log-std block (Fisher 2 I) resized to max_kl: the step moves it by delta with the
    quadratic KL 0.5 * 2 |delta|^2 = max_kl, and the exact KL between the two Gaussians
    (same mean, log-std + delta), summed by hand here, agrees to third order; the block
    keeps its direction and every other tensor is the same object's values."""
    gen = torch.Generator().manual_seed(seed)
    direction = [torch.randn(3, 4, generator=gen, dtype=torch.float64),
                 torch.randn(2, generator=gen, dtype=torch.float64)]
    step, max_kl = 0.37, 1e-5
    resized = resize_diagonal_block(direction, 1, 2.0, step, max_kl=max_kl,
                                    max_step=math.inf)
    assert torch.equal(resized[0], direction[0])
    delta = step * resized[1]
    assert float(delta.pow(2).sum()) == pytest.approx(max_kl, rel=1e-12)
    cos = float(resized[1] @ direction[1]) / float(resized[1].norm() * direction[1].norm())
    assert cos == pytest.approx(1.0, abs=1e-12)
    # KL(N(0, s^2) || N(0, s^2 e^(2 delta))) per dimension = delta + (e^(-2 delta) - 1) / 2.
    exact = sum(float(d) + (math.exp(-2.0 * float(d)) - 1.0) / 2.0 for d in delta)
    assert exact == pytest.approx(max_kl, rel=10 * float(delta.abs().max()))
    # A Newton cap below the bound wins; a zero block or a zero step changes nothing.
    capped = resize_diagonal_block(direction, 1, 2.0, step, max_kl=1.0, max_step=0.5)
    assert torch.allclose(step * capped[1], 0.5 * direction[1])
    zero = [direction[0], torch.zeros(2, dtype=torch.float64)]
    assert torch.equal(resize_diagonal_block(zero, 1, 2.0, step, max_kl=max_kl,
                                             max_step=math.inf)[1], zero[1])
    assert torch.equal(resize_diagonal_block(direction, 1, 2.0, 0.0, max_kl=max_kl,
                                             max_step=math.inf)[1], direction[1])
