"""KFCPO's exact span step against a brute-force search of the same subproblem.

The subproblem (docs/algorithm.md, step 6, ``step_rule: span``): over x = u_r n_r + u_c n_c,
maximise g_r.x subject to x'Fx <= R^2 and g_c.x >= kappa R sqrt(b'Q^-1 b). Here F is an
explicit random SPD matrix and the naturals are dense solves; the reference optimum is a
search over 200,001 points of the trust-region boundary (a linear objective over an
ellipse cut by a half-plane peaks on the boundary arc), computed without the solver's
whitening.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rllib_kfcpo.algorithms.kfcpo.manipulation import cost_requirement, solve_span_trust_region


def problem(seed: int, *, conflict: float | None = None):
    rng = np.random.default_rng(seed)
    n = 6
    m = rng.standard_normal((n, n))
    fisher = m @ m.T + 0.1 * np.eye(n)
    g_r = rng.standard_normal(n)
    g_c = rng.standard_normal(n)
    if conflict is not None:  # make g_c = conflict * g_r + noise (strong (anti)alignment)
        g_c = conflict * g_r + 0.3 * rng.standard_normal(n)
    n_r, n_c = np.linalg.solve(fisher, g_r), np.linalg.solve(fisher, g_c)
    basis = np.stack([n_r, n_c], axis=1)
    gram = basis.T @ fisher @ basis
    a = np.array([g_r @ n_r, g_r @ n_c])
    b = np.array([g_c @ n_r, g_c @ n_c])
    return gram, a, b


def brute_force(gram, a, b, radius, kappa, points=200_001):
    h = kappa * radius * math.sqrt(b @ np.linalg.solve(gram, b))
    theta = np.linspace(0.0, 2.0 * math.pi, points)
    e = np.stack([np.cos(theta), np.sin(theta)])
    length = radius / np.sqrt(np.einsum("ip,ij,jp->p", e, gram, e))
    u = e * length
    feasible = b @ u >= h - 1e-12
    assert feasible.any()
    values = a @ u
    best = np.argmax(np.where(feasible, values, -np.inf))
    return values[best], h


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("kappa", [-1.0, -0.4, 0.0, 0.5, 0.95, 1.0])
def test_span_step_matches_brute_force(seed, kappa):
    gram, a, b = problem(seed, conflict=[None, -0.8, 0.8][seed % 3])
    radius = 0.05 + seed / 20
    (u_r, u_c), info = solve_span_trust_region(gram, a, b, radius, kappa)
    u = np.array([u_r, u_c])
    best, h = brute_force(gram, a, b, radius, kappa)
    # Feasible: inside the trust region, buys the required cost decrease.
    assert u @ gram @ u <= radius**2 * (1 + 1e-9)
    assert b @ u >= h - 1e-9 * (1 + abs(h))
    # Optimal: the grid optimum is never better (up to its resolution).
    assert a @ u >= best - 1e-6 * (1 + abs(best))
    assert info["reward_gain"] == pytest.approx(a @ u, rel=1e-9, abs=1e-12)
    assert info["cost_decrease"] == pytest.approx(b @ u, rel=1e-9, abs=1e-12)
    assert info["quad"] == pytest.approx(u @ gram @ u, rel=1e-9, abs=1e-15)


def test_inactive_constraint_gives_the_natural_reward_step():
    gram, a, b = problem(3, conflict=0.8)  # aligned: the reward step decreases the cost
    (u_r, u_c), info = solve_span_trust_region(gram, a, b, 0.1, kappa=-1.0)
    assert info["active"] == 0.0
    # x = s n_r with s = R / |n_r|_F: u = (s, 0).
    assert u_c == pytest.approx(0.0, abs=1e-9)
    assert u_r == pytest.approx(0.1 / math.sqrt(gram[0, 0]), rel=1e-9)


def test_kappa_one_is_pure_cost_descent_and_zero_is_the_projection():
    gram, a, b = problem(4, conflict=-0.8)  # conflicting directions
    (u_r, u_c), info = solve_span_trust_region(gram, a, b, 0.2, kappa=1.0)
    assert info["active"] == 1.0
    # The largest cost decrease in the trust region is along n_c: u = (0, R / |n_c|_F).
    assert u_r == pytest.approx(0.0, abs=1e-7)
    assert u_c == pytest.approx(0.2 / math.sqrt(gram[1, 1]), rel=1e-6)
    # kappa = 0: zero first-order cost change, along n_r projected off n_c in the metric.
    (u_r, u_c), _ = solve_span_trust_region(gram, a, b, 0.2, kappa=0.0)
    assert b @ np.array([u_r, u_c]) == pytest.approx(0.0, abs=1e-12)
    # With an exact Fisher, b = (<n_c, n_r>_F, <n_c, n_c>_F): that is n_r projected off n_c,
    # n_r' = n_r - (<n_r, n_c>_F / <n_c, n_c>_F) n_c.
    assert u_r > 0.0
    assert u_c / u_r == pytest.approx(-gram[0, 1] / gram[1, 1], rel=1e-6)


def test_cost_requirement_maps_the_margin_weights():
    assert cost_requirement(1.0) == 1.0
    assert cost_requirement(0.5) == 0.0
    assert cost_requirement(0.0) == -1.0


def test_degenerate_gram_and_no_cost_signal():
    gram = np.array([[2.0, 0.0], [0.0, 3.0]])
    (u_r, u_c), info = solve_span_trust_region(gram, [2.0, 0.0], [0.0, 0.0], 1.0, 0.9)
    assert info["active"] == 0.0 and u_c == 0.0
    assert u_r == pytest.approx(1.0 / math.sqrt(2.0))
    (u_r, u_c), info = solve_span_trust_region(np.zeros((2, 2)), [0.0, 0.0], [0.0, 0.0],
                                               1.0, 0.0)
    assert math.isfinite(u_r) and math.isfinite(u_c)
