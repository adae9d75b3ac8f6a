"""Exact Fisher of a categorical policy, against dense brute force (float64).

- KFCPO's ``step_metric="exact"`` Gram (:func:`categorical_fisher_gram`, two forward-mode
  JVPs and ``diag(p) - p p^T``) against the dense Fisher ``mean_s J_s^T (diag p - p p^T) J_s``
  (per-row autograd Jacobians of the logits) restricted to the span, and against the
  autograd Hessian of the real mean KL in the span;
- CPO's Fisher-vector products (double backward of the mean KL of RLlib's
  ``TorchCategorical``) against the same dense Fisher and the dense Hessian of the KL.
"""

from __future__ import annotations

import pytest
import torch
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
from torch import nn
from torch.func import functional_call

from rllib_kfcpo.algorithms.cpo.second_order import FisherVectorProduct, flat
from rllib_kfcpo.algorithms.kfcpo.manipulation import categorical_fisher_gram

F64 = torch.float64
ACTIONS = 3


def tiny_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, ACTIONS)).to(F64)
    with torch.no_grad():
        net[2].weight.mul_(3.0)  # far from uniform: diag(p) - pp^T is not a multiple of I
    return net


def dense_fisher(net: nn.Module, obs: torch.Tensor, weights: torch.Tensor,
                 outer: bool = True) -> torch.Tensor:
    """sum_s w_s J_s^T (diag p_s - p_s p_s^T) J_s / sum w, J_s the logits' Jacobian
    (``outer=False``: without the - p p^T term, a plain diag(p) metric)."""
    params = list(net.parameters())
    total = 0
    for row, w in zip(obs, weights, strict=True):
        logits = net(row[None])[0]
        jac = torch.stack([flat(torch.autograd.grad(logits[i], params, retain_graph=True))
                           for i in range(ACTIONS)])
        p = torch.softmax(logits.detach(), -1)
        metric = torch.diag(p) - (torch.outer(p, p) if outer else 0.0)
        total = total + w * jac.T @ metric @ jac
    return total / weights.sum()


def mean_kl_in_span(net, obs, weights, directions):
    """t -> weighted mean KL(pi_theta || pi_(theta + sum t_k d_k)) over the rows."""
    names = [n for n, _ in net.named_parameters()]
    base = [p.detach() for p in net.parameters()]
    with torch.no_grad():
        logp0 = torch.log_softmax(net(obs), -1)

    def kl(t):
        moved = {n: p + sum(t[k] * directions[k][i] for k in range(len(directions)))
                 for i, (n, p) in enumerate(zip(names, base, strict=True))}
        logp1 = torch.log_softmax(functional_call(net, moved, (obs,)), -1)
        per_row = (logp0.exp() * (logp0 - logp1)).sum(-1)
        return (per_row * weights).sum() / weights.sum()

    return kl


@pytest.mark.parametrize("seed", range(3))
def test_exact_gram_equals_the_dense_fisher_and_the_kl_hessian_in_the_span(seed):
    net = tiny_net(seed)
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(13, 3, generator=gen, dtype=F64)
    mask = (torch.rand(13, generator=gen) > 0.25).to(F64)
    dirs = [[torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
            for _ in range(3)]
    gram = categorical_fisher_gram(net, params, dirs, obs, mask)

    fisher = dense_fisher(net, obs, mask)
    span = torch.stack([flat(d) for d in dirs], 1)
    torch.testing.assert_close(gram, span.T @ fisher @ span, rtol=1e-10, atol=1e-12)
    hessian = torch.autograd.functional.hessian(mean_kl_in_span(net, obs, mask, dirs),
                                                torch.zeros(3, dtype=F64))
    torch.testing.assert_close(gram, hessian, rtol=1e-9, atol=1e-12)
    # Without the -p p^T term (a plain diag(p) metric) the Gram is another matrix.
    diagonal_only = span.T @ dense_fisher(net, obs, mask, outer=False) @ span
    assert not torch.allclose(gram, diagonal_only, rtol=1e-3)


def test_parameters_outside_params_do_not_move():
    """Directions laid out for the last layer only: the first layer gets zero tangent."""
    net = tiny_net(0)
    only_last = [net[2].weight, net[2].bias]
    gen = torch.Generator().manual_seed(5)
    d = [torch.randn(p.shape, generator=gen, dtype=F64) for p in only_last]
    obs = torch.randn(9, 3, generator=gen, dtype=F64)
    gram = categorical_fisher_gram(net, only_last, [d], obs)
    with torch.no_grad():
        hidden = torch.tanh(net[0](obs))
        u = hidden @ d[0].T + d[1]  # directional derivative of the logits
        p = torch.softmax(net(obs), -1)
    expected = ((p * u * u).sum(-1) - (p * u).sum(-1) ** 2).mean()
    torch.testing.assert_close(gram[0, 0], expected.to(F64), rtol=1e-10, atol=1e-12)


def test_cpo_fisher_vector_products_of_a_categorical_policy_equal_the_dense_fisher():
    """CPO's FVP (double backward of the mean TorchCategorical KL) is the dense softmax
    Fisher and the dense Hessian of the KL, column by column."""
    net = tiny_net(7)
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(7)
    obs = torch.randn(11, 3, generator=gen, dtype=F64)
    ones = torch.ones(11, dtype=F64)
    fisher = dense_fisher(net, obs, ones)
    n = fisher.shape[0]

    names = [name for name, _ in net.named_parameters()]
    sizes = [p.numel() for p in params]
    with torch.no_grad():
        logits0 = net(obs)

    def kl_of(theta):
        state = {name: c.view_as(p) for name, c, p in
                 zip(names, torch.split(theta, sizes), params, strict=True)}
        logits1 = functional_call(net, state, (obs,))
        return TorchCategorical.from_logits(logits0).kl(
            TorchCategorical.from_logits(logits1)).mean()

    hessian = torch.autograd.functional.hessian(kl_of, flat([p.detach() for p in params]))
    torch.testing.assert_close(hessian, fisher, rtol=1e-9, atol=1e-11)

    kl = TorchCategorical.from_logits(logits0).kl(TorchCategorical.from_logits(net(obs))).mean()
    fvp = FisherVectorProduct(kl, params, damping=0.1)
    dense = torch.stack([fvp(e) for e in torch.eye(n, dtype=F64)], dim=1)
    torch.testing.assert_close(dense, fisher + 0.1 * torch.eye(n, dtype=F64), rtol=1e-9,
                               atol=1e-11)
