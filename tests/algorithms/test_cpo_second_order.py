"""CPO's second-order core against dense brute force (no RLlib, no Ray).

- Fisher-vector products (double backward of the mean KL) against the dense Hessian of
  the KL (``torch.autograd.functional.hessian``) and against the analytic Gaussian Fisher
  ``J' M J`` (J: Jacobian of mean and log-std, M = diag(1/sigma^2, 2)) of a tiny policy;
- conjugate gradient against ``torch.linalg.solve``;
- the closed-form CPO step against a numerical solution of the same quadratically
  constrained problem (scipy's SLSQP from many starts) on random ``(g, b, c, F)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from rllib_kfcpo.algorithms.cpo.second_order import (
    CASE_CONSTRAINED,
    CASE_FEASIBLE_RECOVERY,
    CASE_INACTIVE,
    CASE_INFEASIBLE,
    CASE_NO_COST_GRADIENT,
    FisherVectorProduct,
    conjugate_gradient,
    cpo_step,
    flat,
    step_acceptable,
)

optimize = pytest.importorskip("scipy.optimize")

OBS, HIDDEN, ACT, N = 3, 5, 2, 40


class TinyPolicy(nn.Module):
    """A Gaussian policy: tanh MLP mean, state-independent log-std."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(OBS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, ACT))
        self.log_std = nn.Parameter(torch.tensor([-0.3, 0.2]))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)
        return mean, self.log_std.expand_as(mean)


def gaussian_kl(mean0, log_std0, mean1, log_std1) -> torch.Tensor:
    """Mean over rows of KL(N0 || N1), summed over action dimensions."""
    var0, var1 = (2 * log_std0).exp(), (2 * log_std1).exp()
    kl = log_std1 - log_std0 + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5
    return kl.sum(-1).mean()


@pytest.fixture
def policy_and_obs():
    torch.manual_seed(0)
    policy = TinyPolicy().double()
    obs = torch.randn(N, OBS, dtype=torch.float64)
    return policy, obs


def dense_kl_hessian(policy: TinyPolicy, obs: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in policy.named_parameters()]
    params = [p.detach() for _, p in policy.named_parameters()]
    with torch.no_grad():
        mean0, log_std0 = policy(obs)
    sizes = [p.numel() for p in params]

    def kl_of(theta: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(theta, sizes)
        state = {n: c.view_as(p) for n, c, p in zip(names, chunks, params, strict=True)}
        mean1, log_std1 = functional_call(policy, state, (obs,))
        return gaussian_kl(mean0, log_std0, mean1, log_std1)

    return torch.autograd.functional.hessian(kl_of, flat(params))


def analytic_fisher(policy: TinyPolicy, obs: torch.Tensor) -> torch.Tensor:
    """E_s[J' M J]: the Fisher of a diagonal Gaussian in (mean, log-std) is diag(1/var, 2)."""
    params = list(policy.parameters())
    total = 0
    for row in obs:
        mean, log_std = policy(row[None])
        outputs = torch.cat([mean.reshape(-1), log_std.reshape(-1)])
        jac = torch.stack([flat([g if g is not None else torch.zeros_like(p) for g, p in zip(
            torch.autograd.grad(o, params, retain_graph=True, allow_unused=True), params,
            strict=True)]) for o in outputs])
        m = torch.cat([(-2 * log_std.reshape(-1)).exp(), torch.full((ACT,), 2.0,
                                                                    dtype=obs.dtype)])
        total = total + jac.T @ torch.diag(m) @ jac
    return total / len(obs)


def fvp_of(policy: TinyPolicy, obs: torch.Tensor, damping: float) -> FisherVectorProduct:
    with torch.no_grad():
        mean0, log_std0 = policy(obs)
    mean1, log_std1 = policy(obs)
    return FisherVectorProduct(gaussian_kl(mean0, log_std0, mean1, log_std1),
                               list(policy.parameters()), damping)


def test_fisher_vector_products_equal_the_dense_fisher(policy_and_obs):
    policy, obs = policy_and_obs
    hessian = dense_kl_hessian(policy, obs)
    fisher = analytic_fisher(policy, obs)
    n = hessian.shape[0]
    assert n == OBS * HIDDEN + HIDDEN + HIDDEN * ACT + ACT + ACT
    # The KL's Hessian at theta_old is the Fisher (two independent computations agree).
    torch.testing.assert_close(hessian, fisher, rtol=1e-9, atol=1e-10)
    fvp = fvp_of(policy, obs, damping=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        v = torch.randn(n, dtype=torch.float64, generator=gen)
        torch.testing.assert_close(fvp(v), fisher @ v + 0.1 * v, rtol=1e-9, atol=1e-10)
    # Every column: F e_i (the whole matrix, one product per column).
    dense = torch.stack([fvp(e) for e in torch.eye(n, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(dense, fisher + 0.1 * torch.eye(n, dtype=torch.float64),
                               rtol=1e-9, atol=1e-10)


def test_conjugate_gradient_equals_a_dense_solve():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 7, 15):
        m = torch.randn(n, n, dtype=torch.float64, generator=gen)
        a = m @ m.T + 0.1 * torch.eye(n, dtype=torch.float64)
        b = torch.randn(n, dtype=torch.float64, generator=gen)
        # CG is exact in n steps (in exact arithmetic); a few more absorb rounding.
        x = conjugate_gradient(lambda v, a=a: a @ v, b, iters=n + 5)
        torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    # After k < n iterations CG holds the minimiser of 0.5 x'Ax - b'x over the Krylov
    # space span{b, Ab, ..., A^(k-1) b}: computed densely here.
    for k in (1, 3, 6):
        xk = conjugate_gradient(lambda v: a @ v, b, iters=k)
        basis = torch.stack([torch.linalg.matrix_power(a, i) @ b for i in range(k)], dim=1)
        want = basis @ torch.linalg.solve(basis.T @ a @ basis, basis.T @ b)
        torch.testing.assert_close(xk, want, rtol=1e-6, atol=1e-9)


def test_conjugate_gradient_with_fisher_vector_products(policy_and_obs):
    policy, obs = policy_and_obs
    fisher = analytic_fisher(policy, obs)
    n = fisher.shape[0]
    g = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = conjugate_gradient(fvp_of(policy, obs, damping=0.1), g, iters=4 * n)
    want = torch.linalg.solve(fisher + 0.1 * torch.eye(n, dtype=torch.float64), g)
    torch.testing.assert_close(x, want, rtol=1e-6, atol=1e-8)


# --- The closed-form step vs a numerical solution of the same problem --------------------
def brute_force(g, b, c, fisher, delta):
    """max g'd s.t. 0.5 d'Fd <= delta, c + b'd <= 0 by SLSQP from many starts; None if no
    start reaches a feasible point (the problem is infeasible)."""
    cons = [{"type": "ineq", "fun": lambda d: delta - 0.5 * d @ fisher @ d,
             "jac": lambda d: -fisher @ d},
            {"type": "ineq", "fun": lambda d: -(c + b @ d), "jac": lambda d: -b}]
    rng = np.random.default_rng(0)
    best = None
    radius = math.sqrt(2 * delta / np.linalg.eigvalsh(fisher).max())
    for start in [np.zeros_like(g), *(rng.normal(size=g.shape) * radius for _ in range(7))]:
        res = optimize.minimize(lambda d: -g @ d, start, jac=lambda d: -g, constraints=cons,
                                method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
        d = res.x
        feasible = (0.5 * d @ fisher @ d <= delta * (1 + 1e-7)) and (c + b @ d <= 1e-7)
        if feasible and (best is None or g @ d > g @ best):
            best = d
    return best


def steepest_cost_decrease(b, fisher, delta):
    """min b'd s.t. 0.5 d'Fd <= delta, by SLSQP."""
    cons = [{"type": "ineq", "fun": lambda v: delta - 0.5 * v @ fisher @ v}]
    return optimize.minimize(lambda v: b @ v, np.zeros_like(b), jac=lambda v: b,
                             constraints=cons, method="SLSQP",
                             options={"ftol": 1e-14, "maxiter": 500}).x


def random_problem(rng, n):
    m = rng.normal(size=(n, n))
    fisher = m @ m.T / n + 0.1 * np.eye(n)
    g, b = rng.normal(size=n), rng.normal(size=n)
    delta = 0.01
    s = b @ np.linalg.solve(fisher, b)
    # Cost offsets around the trust region's reach sqrt(2 delta s): every case appears.
    c = rng.uniform(-2.0, 2.0) * math.sqrt(2 * delta * s)
    return g, b, c, fisher, delta


def closed_form(g, b, c, fisher, delta):
    x, p = np.linalg.solve(fisher, g), np.linalg.solve(fisher, b)
    step = cpo_step(q=g @ x, r=g @ p, s=b @ p, c=c, target_kl=delta, cost_grad_sq=b @ b)
    return step.coeff_x * x + step.coeff_p * p, step


def test_closed_form_step_solves_the_qp_in_every_case():
    rng = np.random.default_rng(0)
    seen = {}
    for trial in range(150):
        g, b, c, fisher, delta = random_problem(rng, n=int(rng.integers(2, 7)))
        d, step = closed_form(g, b, c, fisher, delta)
        seen[step.case] = seen.get(step.case, 0) + 1
        ref = brute_force(g, b, c, fisher, delta)
        if step.case == CASE_INFEASIBLE:
            # No d in the trust region meets the constraint ...
            assert ref is None, f"trial {trial}: brute force found a feasible step"
            # ... and the recovery step is the trust region's steepest cost decrease.
            rec = steepest_cost_decrease(b, fisher, delta)
            np.testing.assert_allclose(d, rec, rtol=1e-4, atol=1e-6, err_msg=f"trial {trial}")
            continue
        assert ref is not None, f"trial {trial}: case {step.case} but no feasible step"
        # Feasible, and as good as the numerical optimum (unique: linear objective on a
        # strictly convex set), so the steps coincide.
        assert 0.5 * d @ fisher @ d <= delta * (1 + 1e-6)
        assert c + b @ d <= 1e-6 * max(1.0, abs(c))
        assert g @ d == pytest.approx(g @ ref, rel=1e-5, abs=1e-8), f"trial {trial}"
        np.testing.assert_allclose(d, ref, rtol=1e-3, atol=1e-5, err_msg=f"trial {trial}")
    assert seen.get(CASE_INFEASIBLE, 0) >= 10
    assert seen.get(CASE_INACTIVE, 0) >= 10
    assert seen.get(CASE_CONSTRAINED, 0) >= 10
    assert seen.get(CASE_FEASIBLE_RECOVERY, 0) >= 10


def test_inactive_constraint_gives_the_trpo_step():
    # c very negative: the whole trust region is feasible, the step is TRPO's.
    rng = np.random.default_rng(5)
    g, b, _, fisher, delta = random_problem(rng, n=4)
    d, step = closed_form(g, b, -100.0, fisher, delta)
    x = np.linalg.solve(fisher, g)
    assert step.case == CASE_INACTIVE
    np.testing.assert_allclose(d, math.sqrt(2 * delta / (g @ x)) * x, rtol=1e-12)
    # Constraint satisfied by the TRPO step although it cuts the trust region (case 2):
    # the constraint's multiplier is 0 and the step is still TRPO's.
    trpo = math.sqrt(2 * delta / (g @ x)) * x
    c = -(b @ trpo) - 1e-3 if b @ trpo > 0 else -1e-3
    d2, step2 = closed_form(g, b, c, fisher, delta)
    if step2.case == CASE_CONSTRAINED:
        assert step2.nu == 0.0
        np.testing.assert_allclose(d2, trpo, rtol=1e-9)


def test_zero_cost_gradient_with_slack_is_trpo():
    step = cpo_step(q=2.0, r=0.0, s=0.0, c=-1.0, target_kl=0.01, cost_grad_sq=0.0)
    assert step.case == CASE_NO_COST_GRADIENT
    assert step.coeff_x == pytest.approx(math.sqrt(2 * 0.01 / 2.0)) and step.coeff_p == 0.0


@pytest.mark.parametrize(("case", "improvement", "cost_change", "kl", "c", "kept"), [
    (CASE_INACTIVE, 0.1, 0.0, 0.009, -0.2, True),
    (CASE_INACTIVE, 0.1, 0.0, 0.011, -0.2, False),  # real KL above the target
    (CASE_INACTIVE, -1e-6, 0.0, 0.005, -0.2, False),  # feasible: reward must not fall
    (CASE_FEASIBLE_RECOVERY, -1.0, -0.1, 0.005, 0.3, True),  # recovery: reward may fall
    (CASE_INFEASIBLE, -1.0, -0.1, 0.005, 0.3, True),
    (CASE_INFEASIBLE, 0.1, 1e-6, 0.005, 0.3, False),  # infeasible: cost must not rise
    (CASE_CONSTRAINED, 0.1, 0.19, 0.005, -0.2, True),  # cost may use the slack -c ...
    (CASE_CONSTRAINED, 0.1, 0.21, 0.005, -0.2, False),  # ... but no more
    (CASE_CONSTRAINED, math.nan, 0.0, 0.005, -0.2, False),
    (CASE_NO_COST_GRADIENT, 0.1, 0.0, math.inf, -0.2, False),
])
def test_line_search_acceptance(case, improvement, cost_change, kl, c, kept):
    assert step_acceptable(case=case, reward_improvement=improvement,
                           cost_change=cost_change, kl=kl, c=c, target_kl=0.01) is kept
