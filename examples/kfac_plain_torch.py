"""K-FAC natural-gradient policy steps in plain torch (no Ray, no RLlib).

``rllib_kfcpo.kfac`` is a plain torch component. This example trains a small Gaussian
policy on a one-step continuous bandit (reward ``-|a - target(s)|^2``) with ACKTR's recipe:
true-Fisher statistics from actions sampled from the current policy (``capture()``), the
surrogate's gradient preconditioned by the K-FAC inverse, and the step scaled so the
quadratic KL estimate ``0.5 a^2 d'Fd`` stays at ``max_kl``::

    .venv/bin/python examples/kfac_plain_torch.py --iterations 60
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from rllib_kfcpo.kfac import KFACPreconditioner

#: Exact Fisher of a Gaussian's log-std, per dimension.
LOG_STD_FISHER = 2.0


class GaussianPolicy(nn.Module):
    """tanh MLP mean and a state-independent log-std."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(obs_dim, hidden), nn.Linear(hidden, act_dim)])
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.layers[1](torch.tanh(self.layers[0](obs)))
        return torch.distributions.Normal(mean, self.log_std.exp())


def mean_reward(policy: GaussianPolicy, obs: torch.Tensor, target: torch.Tensor) -> float:
    """Expected reward of the policy's mean action (no sampling noise)."""
    with torch.no_grad():
        return float(-(policy(obs).mean - target).pow(2).sum(-1).mean())


def train(iterations: int = 60, batch: int = 256, max_kl: float = 0.01,
          seed: int = 0) -> list[float]:
    """Natural policy-gradient steps with K-FAC; returns the mean-action reward per step."""
    torch.manual_seed(seed)
    obs_dim, act_dim = 4, 2
    policy = GaussianPolicy(obs_dim, act_dim)
    weights = torch.randn(obs_dim, act_dim)
    kfac = KFACPreconditioner(list(policy.layers), [(policy.log_std, LOG_STD_FISHER)],
                              damping=1e-2, burn_in=5)
    history = []
    for _ in range(iterations):
        obs = torch.randn(batch, obs_dim)
        target = torch.tanh(obs @ weights)
        # 1. True-Fisher statistics: backward of -log pi(a~|s), a~ from the current policy.
        with kfac.capture():
            dist = policy(obs)
            sampled = dist.sample()
            torch.autograd.grad(-dist.log_prob(sampled).sum(-1).mean(), kfac.params)
        kfac.update_factors()
        # 2. Policy-gradient surrogate on the same actions (reward baseline: the batch mean).
        reward = -(sampled - target).pow(2).sum(-1)
        advantage = (reward - reward.mean()) / (reward.std() + 1e-8)
        surrogate = (policy(obs).log_prob(sampled).sum(-1) * advantage).mean()
        grads = torch.autograd.grad(surrogate, kfac.params)
        # 3. Natural direction and a step sized to the quadratic KL bound.
        natural = kfac.precondition(list(grads))
        quad = float(kfac.quad(natural))
        step = min(1.0, math.sqrt(2.0 * max_kl / quad)) if quad > 0 else 0.0
        with torch.no_grad():
            for param, direction in zip(kfac.params, natural, strict=True):
                param.add_(direction, alpha=step)
        history.append(mean_reward(policy, obs, target))
    return history


def main(argv: list[str] | None = None) -> int:
    """Trains and prints the reward every 10 steps."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    history = train(args.iterations, seed=args.seed)
    for i in range(0, len(history), 10):
        print(f"step {i + 1:4d} | mean-action reward {history[i]:8.4f}")
    print(f"final mean-action reward {history[-1]:.4f} (first {history[0]:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
