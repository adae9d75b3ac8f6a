"""gaussian_fisher_gram against the autograd Hessian of the real KL in the span (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rllib_kfcpo.algorithms.kfcpo.manipulation import gaussian_fisher_gram

F64 = torch.float64


def kl_diag_gaussian(mu0, logstd0, mu1, logstd1):
    """KL(N0 || N1) per row, summed over action dims (closed form)."""
    var0, var1 = torch.exp(2 * logstd0), torch.exp(2 * logstd1)
    return (logstd1 - logstd0 + (var0 + (mu0 - mu1) ** 2) / (2 * var1) - 0.5).sum(-1)


@pytest.mark.parametrize("seed", range(5))
def test_gram_equals_hessian_of_the_real_kl(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)
    log_std = nn.Parameter(torch.randn(2, dtype=F64) * 0.3)
    params = [*net.parameters(), log_std]
    obs = torch.randn(17, 3, dtype=F64)
    mask = (torch.rand(17) > 0.2).to(F64)
    dirs = [[torch.randn_like(p) for p in params] for _ in range(3)]
    gram = gaussian_fisher_gram(net, log_std, params, dirs, obs, mask)

    names = [n for n, _ in net.named_parameters()]
    with torch.no_grad():
        mu0 = net(obs)

    def mean_kl(t):
        moved = {n: p + sum(t[k] * dirs[k][i] for k in range(3))
                 for i, (n, p) in enumerate(zip(names, net.parameters(), strict=False))}
        mu1 = torch.func.functional_call(net, moved, (obs,))
        logstd1 = log_std + sum(t[k] * dirs[k][-1] for k in range(3))
        per_row = kl_diag_gaussian(mu0, log_std.detach().expand_as(mu0), mu1,
                                   logstd1.expand_as(mu1))
        return (per_row * mask).sum() / mask.sum()

    hessian = torch.autograd.functional.hessian(mean_kl, torch.zeros(3, dtype=F64))
    torch.testing.assert_close(gram, hessian, rtol=1e-10, atol=1e-12)


def test_parameters_outside_params_do_not_move():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    log_std = nn.Parameter(torch.zeros(2, dtype=F64))
    only_last = [net[2].weight, net[2].bias]
    d = [torch.randn_like(p) for p in only_last]
    obs = torch.randn(9, 3, dtype=F64)
    gram = gaussian_fisher_gram(net, log_std, only_last, [d], obs)
    hidden = torch.tanh(net[0](obs))
    d_mean = hidden @ d[0].T + d[1]
    torch.testing.assert_close(gram[0, 0], (d_mean ** 2).sum(-1).mean())
