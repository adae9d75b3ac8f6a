"""K-FAC against explicit Kronecker matrices built by brute force (float64).

vec stacks columns: for ``V = [grad_W, grad_b]`` (out, in+1), ``vec(V) = V.T.reshape(-1)``
and the layer's Fisher block is ``torch.kron(A, G)`` (see ``reference.py``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rllib_kfcpo.kfac import DiagonalBlock, KFACPreconditioner, KroneckerBlock, LinearStatistics
from tests.kfac.reference import (
    LOG_STD_FISHER,
    brute_force_factors,
    capture,
    fisher_loss,
    layer_matrix,
    make_batch,
    make_policy,
    per_sample,
    unvec,
    vec,
)

DAMPING = 1e-2
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _fitted(bias: bool = True, n: int = 16, seed: int = 0):
    policy = make_policy(seed, bias=bias)
    kfac = KFACPreconditioner(policy.layers, [(policy.log_std, LOG_STD_FISHER)],
                              damping=DAMPING)
    obs, actions = make_batch(policy, n, seed=seed + 100)
    assert capture(kfac, policy, obs, actions)
    return policy, kfac, obs, actions


def _split(kfac: KFACPreconditioner, tensors):
    """[(w, b or None) per layer], log-std tensor."""
    out, i = [], 0
    for layer in kfac.layers:
        if layer.bias is not None:
            out.append((tensors[i], tensors[i + 1]))
            i += 2
        else:
            out.append((tensors[i], None))
            i += 1
    return out, tensors[i]


def _random_like_params(kfac: KFACPreconditioner, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in kfac.params]


@pytest.mark.parametrize("bias", [True, False])
def test_factors_match_per_sample_brute_force(bias):
    policy, kfac, obs, actions = _fitted(bias=bias)
    # The brute-force per-sample gradients are right: grad_W_i = g_i a_i^T.
    a, g, param_grads = per_sample(policy, obs, actions)
    for j in range(len(policy.layers)):
        for i in range(obs.shape[0]):
            torch.testing.assert_close(layer_matrix(*param_grads[j][i]) if bias
                                       else param_grads[j][i][0],
                                       torch.outer(g[j][i], a[j][i]), **TIGHT)
    # One update with burn-in: the running factors are the batch factors.
    for block, (A, G) in zip(kfac.blocks, brute_force_factors(policy, obs, actions), strict=True):
        torch.testing.assert_close(block.A, A, **TIGHT)
        torch.testing.assert_close(block.G, G, **TIGHT)


@pytest.mark.parametrize("bias", [True, False])
def test_precondition_is_exact_damped_kronecker_solve(bias):
    policy, kfac, obs, actions = _fitted(bias=bias)
    grads = _random_like_params(kfac, seed=7)
    natural = kfac.precondition(grads)
    assert [t.shape for t in natural] == [p.shape for p in kfac.params]

    got_layers, got_log_std = _split(kfac, natural)
    grad_layers, grad_log_std = _split(kfac, grads)
    factors = brute_force_factors(policy, obs, actions)
    for (A, G), (gw, gb), (nw, nb) in zip(factors, grad_layers, got_layers, strict=True):
        V = layer_matrix(gw, gb)
        F_block = torch.kron(A, G) + DAMPING * torch.eye(A.shape[0] * G.shape[0],
                                                         dtype=A.dtype)
        expected = unvec(torch.linalg.solve(F_block, vec(V)), rows=V.shape[0])
        torch.testing.assert_close(layer_matrix(nw, nb), expected, rtol=1e-9, atol=1e-11)
        # Same as G^-1 V A^-1 with the damping folded into the eigenvalue products; and
        # different from the row-stacking pairing (a convention check with teeth).
        wrong = unvec(torch.linalg.solve(torch.kron(G, A) + DAMPING * torch.eye(
            A.shape[0] * G.shape[0], dtype=A.dtype), vec(V)), rows=V.shape[0])
        assert not torch.allclose(expected, wrong)
    fisher_log_std = torch.full_like(grad_log_std, LOG_STD_FISHER)
    expected_log_std = torch.linalg.solve(torch.diag(fisher_log_std + DAMPING), grad_log_std)
    torch.testing.assert_close(got_log_std, expected_log_std, **TIGHT)


def test_inner_and_quad_match_explicit_fisher():
    policy, kfac, obs, actions = _fitted()
    u = _random_like_params(kfac, seed=1)
    v = _random_like_params(kfac, seed=2)
    factors = brute_force_factors(policy, obs, actions)

    def brute(x, y):
        (xl, x_std), (yl, y_std) = _split(kfac, x), _split(kfac, y)
        total = (x_std * LOG_STD_FISHER * y_std).sum()
        for (A, G), xw, yw in zip(factors, xl, yl, strict=True):
            total = total + vec(layer_matrix(*xw)) @ torch.kron(A, G) @ vec(layer_matrix(*yw))
        return total

    torch.testing.assert_close(kfac.inner(u, v), brute(u, v), **TIGHT)
    torch.testing.assert_close(kfac.inner(u, v), kfac.inner(v, u), **TIGHT)
    torch.testing.assert_close(kfac.quad(u), brute(u, u), **TIGHT)
    # Undamped: the metric does not depend on the damping.
    before = kfac.quad(u)
    kfac.damping = 0.5
    torch.testing.assert_close(kfac.quad(u), before, rtol=0, atol=0)
    # With tiny damping, the natural gradient d = F^-1 g satisfies d^T F d ~= g^T d.
    kfac.damping = 1e-10
    d = kfac.precondition(u)
    g_dot_d = sum((gi * di).sum() for gi, di in zip(u, d, strict=True))
    torch.testing.assert_close(kfac.quad(d), g_dot_d, rtol=1e-6, atol=0)


def test_single_sample_single_layer_factorisation_is_exact_fisher():
    """n = 1: A (x) G equals vec(grad) vec(grad)^T of the per-sample gradient."""
    torch.manual_seed(3)
    layer = nn.Linear(3, 2).double()
    log_std = nn.Parameter(torch.tensor([0.1, -0.2], dtype=torch.float64))

    def policy(obs):
        mean = layer(obs)
        return torch.distributions.Normal(mean, log_std.exp().expand_as(mean))

    kfac = KFACPreconditioner([layer], [(log_std, LOG_STD_FISHER)], damping=DAMPING)
    obs = torch.tensor([[0.3, -1.2, 0.7]], dtype=torch.float64)
    actions = torch.tensor([[0.5, -0.4]], dtype=torch.float64)
    assert capture(kfac, policy, obs, actions)

    gw, gb = torch.autograd.grad(fisher_loss(policy, obs, actions), [layer.weight, layer.bias])
    per_sample_grad = vec(layer_matrix(gw, gb))
    exact = torch.outer(per_sample_grad, per_sample_grad)
    block = kfac.blocks[0]
    torch.testing.assert_close(torch.kron(block.A, block.G), exact, **TIGHT)


def test_extra_leading_dims_are_flattened():
    policy = make_policy(0)
    obs, actions = make_batch(policy, 12, seed=5)
    flat = KFACPreconditioner(policy.layers, damping=DAMPING)
    assert capture(flat, policy, obs, actions)
    nested = KFACPreconditioner(policy.layers, damping=DAMPING)
    assert capture(nested, policy, obs.reshape(3, 4, 3), actions.reshape(3, 4, 2))
    for a, b in zip(flat.blocks, nested.blocks, strict=True):
        torch.testing.assert_close(a.A, b.A, **TIGHT)
        torch.testing.assert_close(a.G, b.G, **TIGHT)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_linear_statistics_alone():
    layer = nn.Linear(3, 2).double()
    stats = LinearStatistics(layer)
    x = torch.randn(5, 3, dtype=torch.float64)
    stats.start_capture()
    y = layer(x)
    with torch.no_grad():
        layer(torch.randn(9, 3, dtype=torch.float64))  # a no-grad forward is not recorded
    (y**2).sum(-1).mean().backward()
    stats.stop_capture()
    A, G = stats.batch_factors()
    a = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], dim=1)
    g = 2 * y.detach()  # per-sample gradient of sum(y^2)
    torch.testing.assert_close(A, a.T @ a / 5, **TIGHT)
    torch.testing.assert_close(G, g.T @ g / 5, **TIGHT)
    assert not stats.has_capture
    with pytest.raises(RuntimeError, match="No K-FAC input captured"):
        stats.batch_factors()
    with pytest.raises(ValueError, match="nn.Linear"):
        LinearStatistics(nn.Conv1d(1, 1, 1))  # type: ignore[arg-type]


def test_blocks_directly():
    block = KroneckerBlock(2, 3, has_bias=True, dtype=torch.float64)
    # Identity factors: precondition divides by 1 + damping, inner is Euclidean.
    w, b = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    pw, pb = block.precondition(w, b, damping=0.25)
    torch.testing.assert_close(pw, w / 1.25, **TIGHT)
    torch.testing.assert_close(pb, b / 1.25, **TIGHT)
    torch.testing.assert_close(block.inner((w, b), (w, b)), (w**2).sum() + (b**2).sum(), **TIGHT)
    assert block.condition_numbers() == (1.0, 1.0)

    log_std = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    diag = DiagonalBlock(log_std, torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    g = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(diag.precondition(g, damping=1.0),
                               torch.tensor([0.5, 1 / 3, 0.2], dtype=torch.float64), **TIGHT)
    torch.testing.assert_close(diag.inner(g, 2 * g), torch.tensor(14.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not broadcast"):
        DiagonalBlock(log_std, torch.ones(2, 3))
    with pytest.raises(ValueError, match="must be finite and > 0"):
        DiagonalBlock(log_std, 0.0)


def test_condition_numbers_match_torch():
    _, kfac, _, _ = _fitted(n=64)
    diag = kfac.diagnostics()
    cond_a = [float(torch.linalg.cond(b.A)) for b in kfac.blocks]
    cond_g = [float(torch.linalg.cond(b.G)) for b in kfac.blocks]
    assert diag["cond_A_max"] == pytest.approx(max(cond_a), rel=1e-6)
    assert diag["cond_A_mean"] == pytest.approx(sum(cond_a) / 2, rel=1e-6)
    assert diag["cond_G_max"] == pytest.approx(max(cond_g), rel=1e-6)
    assert diag["cond_G_mean"] == pytest.approx(sum(cond_g) / 2, rel=1e-6)
    # A singular factor (1 sample, 4 + 1 inputs) gives a large but finite number.
    _, small, _, _ = _fitted(n=1)
    assert 1e10 < small.diagnostics()["cond_A_max"] < float("inf")


def test_relative_damping_is_the_kronecker_solve_with_damping_times_mean_curvature():
    """relative_damping=True: each Kronecker block adds DAMPING * mean(eig(A (x) G)) =
    DAMPING * tr(A) tr(G) / (dim A dim G), the diagonal block DAMPING * mean(f)."""
    policy, kfac, obs, actions = _fitted()
    kfac.relative_damping = True
    grads = _random_like_params(kfac, seed=3)
    got_layers, got_log_std = _split(kfac, kfac.precondition(grads))
    grad_layers, grad_log_std = _split(kfac, grads)
    for (A, G), (gw, gb), (nw, nb) in zip(brute_force_factors(policy, obs, actions),
                                          grad_layers, got_layers, strict=True):
        V = layer_matrix(gw, gb)
        scale = torch.trace(A) * torch.trace(G) / (A.shape[0] * G.shape[0])
        F_block = torch.kron(A, G) + DAMPING * scale * torch.eye(A.shape[0] * G.shape[0],
                                                                 dtype=A.dtype)
        expected = unvec(torch.linalg.solve(F_block, vec(V)), rows=V.shape[0])
        torch.testing.assert_close(layer_matrix(nw, nb), expected, rtol=1e-9, atol=1e-11)
    expected_log_std = grad_log_std / (LOG_STD_FISHER * (1 + DAMPING))
    torch.testing.assert_close(got_log_std, expected_log_std, **TIGHT)
