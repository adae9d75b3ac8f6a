"""CPO's second-order core, plain torch and RLlib-free (tested against dense brute force).

- :class:`FisherVectorProduct`: exact ``F v`` as the double backward of the mean KL
  ``KL(pi_old || pi_theta)`` at ``theta = theta_old`` (the KL's Hessian there is the Fisher),
  plus ``damping * v`` (Schulman's TRPO; OmniSafe ``NaturalPG._fvp``).
- :func:`conjugate_gradient`: ``F^-1 g`` in a fixed number of iterations, from 0.
- :func:`cpo_step`: the closed-form solution of CPO's subproblem (Achiam et al. 2017,
  appendix 10.2; the dual as in Achiam's safety-starter-agents, see :func:`cpo_step`)::

      max_d  g'd   s.t.  0.5 d'Fd <= delta,   c + b'd <= 0

  from ``q = g'F^-1 g``, ``r = g'F^-1 b``, ``s = b'F^-1 b``, ``c`` and ``delta``; the step is
  ``d = coeff_x * F^-1 g + coeff_p * F^-1 b``. When no ``d`` in the trust region meets the
  linearised constraint it returns the recovery step ``d = -sqrt(2 delta / s) F^-1 b`` (the
  steepest decrease of the cost within the trust region).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: OmniSafe's optimisation cases (its ``OptimCase`` metric), see :func:`cpo_step`.
CASE_INFEASIBLE = 0  # x = 0 infeasible and no d in the trust region is feasible: recovery
CASE_FEASIBLE_RECOVERY = 1  # x = 0 infeasible, part of the trust region is feasible
CASE_CONSTRAINED = 2  # x = 0 feasible, the constraint boundary cuts the trust region
CASE_INACTIVE = 3  # the whole trust region is feasible: plain TRPO step
CASE_NO_COST_GRADIENT = 4  # b ~ 0 and x = 0 feasible: plain TRPO step
#: ``b'b`` below this (with c < 0) counts as "no cost gradient" (OmniSafe: 1e-6).
COST_GRADIENT_EPS = 1e-6


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat vector of ``tensors`` (in order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_like(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Splits a flat ``vector`` into tensors shaped as ``like``."""
    out, offset = [], 0
    for t in like:
        out.append(vector[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def flat_grad(output: torch.Tensor, params: Sequence[torch.Tensor], *,
              create_graph: bool = False, retain_graph: bool | None = None) -> torch.Tensor:
    """``d output / d params`` as one flat vector (zeros where a parameter is unused)."""
    grads = torch.autograd.grad(output, list(params), create_graph=create_graph,
                                retain_graph=retain_graph, allow_unused=True)
    return flat([torch.zeros_like(p) if g is None else g
                 for g, p in zip(grads, params, strict=True)])


class FisherVectorProduct:
    """``v -> F v + damping v`` with F the Hessian of ``kl`` w.r.t. ``params``.

    ``kl`` must be the mean KL from the (detached) current policy to the policy computed
    with ``params``, evaluated at the current parameters, so its Hessian is the Fisher.
    Its gradient is built once (``create_graph``); each product is one more backward.
    ``reduce`` (e.g. an all-reduce mean across learners) is applied to ``F v`` before the
    damping is added.
    """

    def __init__(self, kl: torch.Tensor, params: Sequence[torch.Tensor], damping: float,
                 reduce: Callable[[torch.Tensor], None] | None = None) -> None:
        self.params = list(params)
        self.damping = float(damping)
        self.reduce = reduce
        self.grad_kl = flat_grad(kl, self.params, create_graph=True)
        self.calls = 0

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        product = flat_grad(self.grad_kl @ vector.detach(), self.params, retain_graph=True)
        product = product.detach()
        if self.reduce is not None:
            self.reduce(product)
        return product + self.damping * vector


def conjugate_gradient(avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       iters: int, residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximately solves ``A x = b`` (A symmetric positive definite) from ``x = 0``.

    ``iters`` iterations at most; stops early once ``||r|| < residual_tol`` (OmniSafe's
    ``conjugate_gradients``, without its ``1e-6`` in the step's denominator).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if float(rr.sqrt()) < residual_tol:
            break
        ap = avp(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass(frozen=True)
class CPOStep:
    """Solution of CPO's subproblem: ``d = coeff_x F^-1 g + coeff_p F^-1 b``."""

    coeff_x: float
    coeff_p: float
    case: int
    lam: float  # lambda*, the trust region's dual variable (0 in the recovery case)
    nu: float  # nu*, the constraint's dual variable (the recovery step size in case 0)
    A: float = math.nan  # q - r^2 / s  # noqa: N815
    B: float = math.nan  # 2 delta - c^2 / s  # noqa: N815


def _project(value: float, low: float, high: float) -> float:
    """``max(low, min(value, high))``, OmniSafe's ``project`` (low wins if low > high)."""
    return max(low, min(value, high))


def _ratio(num: float, den: float) -> float:
    if den != 0.0:
        return num / den
    return 0.0 if num == 0.0 else math.copysign(math.inf, num) * math.copysign(1.0, den)


def cpo_step(q: float, r: float, s: float, c: float, target_kl: float,
             cost_grad_sq: float = math.inf) -> CPOStep:
    """Closed-form solution of ``max g'd s.t. 0.5 d'Fd <= delta, c + b'd <= 0``.

    Args:
        q: ``g' F^-1 g`` (> 0).
        r: ``g' F^-1 b``.
        s: ``b' F^-1 b`` (> 0 unless ``b = 0``).
        c: the constraint's value at ``d = 0`` (``J_c - d``, in the surrogate's units).
        target_kl: delta, the trust region.
        cost_grad_sq: ``b'b``; below :data:`COST_GRADIENT_EPS` with ``c < 0`` the cost is
            ignored (plain TRPO step, OmniSafe's case 4).

    Returns:
        The step's coefficients on ``F^-1 g`` and ``F^-1 b``, OmniSafe's case number and
        the dual variables.
    """
    delta = float(target_kl)
    trpo = math.sqrt(2.0 * delta / q) if q > 0 else 0.0
    if cost_grad_sq <= COST_GRADIENT_EPS and c < 0:
        return CPOStep(trpo, 0.0, CASE_NO_COST_GRADIENT, _ratio(1.0, trpo), 0.0)
    A = q - r * r / s  # noqa: N806
    B = 2.0 * delta - c * c / s  # noqa: N806
    if c < 0 and B < 0:
        return CPOStep(trpo, 0.0, CASE_INACTIVE, _ratio(1.0, trpo), 0.0, A, B)
    if c >= 0 and B < 0:
        nu = math.sqrt(2.0 * delta / s)
        return CPOStep(0.0, -nu, CASE_INFEASIBLE, 0.0, nu, A, B)
    case = CASE_CONSTRAINED if c < 0 else CASE_FEASIBLE_RECOVERY
    # Dual: max over lambda, nu >= 0 of -(q - 2 nu r + nu^2 s) / (2 lambda) + nu c
    # - lambda delta. For fixed lambda the best nu is (lambda c + r)_+ / s, which splits
    # lambda >= 0 into Lambda_a = {lambda c + r > 0} (constraint active) and Lambda_b.
    # (Achiam's safety-starter-agents writes the same with r of the LOSS gradient, i.e.
    # -r here; OmniSafe's port keeps "lambda c - r" with r of the objective gradient, a
    # sign slip that the brute-force tests catch: see docs/algorithm.md.)
    lam_a = math.sqrt(max(A, 0.0) / B) if B > 0 else math.inf
    lam_b = math.sqrt(q / (2.0 * delta))
    bound = _ratio(-r, c)
    if c < 0:  # Lambda_a = [0, -r/c), Lambda_b = [-r/c, inf)
        lam_a, lam_b = _project(lam_a, 0.0, bound), _project(lam_b, bound, math.inf)
    else:  # Lambda_a = (-r/c, inf), Lambda_b = [0, -r/c]
        lam_a, lam_b = _project(lam_a, bound, math.inf), _project(lam_b, 0.0, bound)

    def f_a(lam: float) -> float:
        if lam <= 0 or not math.isfinite(lam):
            return -math.inf
        return -0.5 * (A / lam + B * lam) + r * c / s

    def f_b(lam: float) -> float:
        if lam <= 0 or not math.isfinite(lam):
            return -math.inf
        return -0.5 * (q / lam + 2.0 * delta * lam)

    lam = lam_a if f_a(lam_a) >= f_b(lam_b) else lam_b
    nu = max(0.0, lam * c + r) / s
    return CPOStep(1.0 / lam, -nu / lam, case, lam, nu, A, B)


def step_acceptable(*, case: int, reward_improvement: float, cost_change: float,
                    kl: float, c: float, target_kl: float) -> bool:
    """The line search's test of one try (real values after the step, all learners').

    Kept when every value is finite, the real mean KL is at most ``target_kl``, the cost
    surrogate rose by at most ``max(0, -c)`` (the slack left by the limit), and, when the
    old policy was feasible (cases 2-4), the reward surrogate did not fall.
    """
    values = (reward_improvement, cost_change, kl)
    if not all(math.isfinite(v) for v in values):
        return False
    if case > CASE_FEASIBLE_RECOVERY and reward_improvement < 0:
        return False
    return cost_change <= max(-c, 0.0) and kl <= target_kl
