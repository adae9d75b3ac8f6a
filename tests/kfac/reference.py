"""Independent brute-force references for the K-FAC tests.

Nothing here uses the preconditioner's hooks: per-sample layer inputs and per-sample
gradients w.r.t. layer outputs come from explicit functional forwards (``F.linear``) and one
autograd call PER SAMPLE.

vec convention (as in the code under test): ``vec`` stacks COLUMNS. A Linear layer's
gradient is the matrix ``V = [grad_W, grad_b]`` of shape ``(out, in+1)``;
``vec(V) = V.T.reshape(-1)`` and the Fisher block is ``torch.kron(A, G)`` with ``A`` the
``(in+1)`` input factor and ``G`` the ``(out)`` output-gradient factor. (Row-stacking,
``V.reshape(-1)``, would pair with ``torch.kron(G, A)`` instead.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_FISHER = 2.0  # exact Fisher of a Gaussian's state-independent log-std, per dimension


class TinyPolicy(nn.Module):
    """A 3 -> 4 -> 2 tanh MLP mean with a state-independent Gaussian log-std."""

    def __init__(self, obs_dim: int = 3, hidden: int = 4, act_dim: int = 2,
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, act_dim, bias=bias)
        self.log_std = nn.Parameter(torch.linspace(-0.4, 0.3, act_dim))

    @property
    def layers(self) -> list[nn.Linear]:
        return [self.fc1, self.fc2]

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.fc2(torch.tanh(self.fc1(obs)))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean),
                                          validate_args=False)  # NaN tests


def make_policy(seed: int = 0, **kwargs) -> TinyPolicy:
    """A float64 TinyPolicy with seeded weights."""
    torch.manual_seed(seed)
    return TinyPolicy(**kwargs).double()


def make_batch(policy: TinyPolicy, n: int, seed: int,
               obs_dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations and actions a~ SAMPLED from the current policy (a fixed generator)."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        dist = policy(obs)
        noise = torch.randn(dist.mean.shape, generator=gen, dtype=torch.float64)
        actions = dist.mean + dist.stddev * noise
    return obs, actions


def fisher_loss(policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """-mean over the batch (all leading dims) of log pi(a~|s)."""
    return -policy(obs).log_prob(actions).sum(-1).mean()


def capture(kfac, policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> bool:
    """One true-Fisher capture and factor update, as the learner does it."""
    with kfac.capture():
        torch.autograd.grad(fisher_loss(policy, obs, actions), kfac.params)
    return kfac.update_factors()


def per_sample(policy: TinyPolicy, obs: torch.Tensor, actions: torch.Tensor):
    """Per-sample (inputs a, output grads g, param grads) of each layer, by brute force.

    Returns three lists over layers: ``a[l]`` (n, in+1 or in), ``g[l]`` (n, out) and
    ``param_grads[l]`` a list over samples of the tuple of that layer's parameter grads.
    """
    layers = policy.layers
    n = obs.shape[0]
    a_rows: list[list[torch.Tensor]] = [[] for _ in layers]
    g_rows: list[list[torch.Tensor]] = [[] for _ in layers]
    p_rows: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in layers]
    for i in range(n):
        h = obs[i]
        outputs = []
        for j, layer in enumerate(layers):
            a = h.detach()
            if layer.bias is not None:
                a = torch.cat([a, a.new_ones(1)])
            a_rows[j].append(a)
            z = F.linear(h, layer.weight, layer.bias)
            outputs.append(z)
            h = torch.tanh(z) if j < len(layers) - 1 else z
        dist = torch.distributions.Normal(h, policy.log_std.exp())
        loss = -dist.log_prob(actions[i]).sum()
        layer_params = [p for layer in layers for p in layer.parameters()]
        grads = torch.autograd.grad(loss, outputs + layer_params)
        k = len(layers)
        for j in range(k):
            g_rows[j].append(grads[j])
        offset = k
        for j, layer in enumerate(layers):
            count = len(list(layer.parameters()))
            p_rows[j].append(tuple(grads[offset:offset + count]))
            offset += count
    return ([torch.stack(r) for r in a_rows], [torch.stack(r) for r in g_rows], p_rows)


def brute_force_factors(policy: TinyPolicy, obs: torch.Tensor,
                        actions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(A, G)`` per layer from per-sample inputs and per-sample output gradients."""
    a, g, _ = per_sample(policy, obs, actions)
    n = obs.shape[0]
    out = []
    for a_l, g_l in zip(a, g, strict=True):
        A = sum(torch.outer(r, r) for r in a_l) / n
        G = sum(torch.outer(r, r) for r in g_l) / n
        out.append((A, G))
    return out


def layer_matrix(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``[w, b]`` as an ``(out, in+1)`` matrix."""
    return w if b is None else torch.cat([w, b[:, None]], dim=1)


def vec(m: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec."""
    return m.T.reshape(-1)


def unvec(v: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of :func:`vec` for a matrix with ``rows`` rows."""
    return v.reshape(-1, rows).T
