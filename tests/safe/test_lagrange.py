"""The Lagrange multiplier moves the right way, alone and inside PPO-Lagrangian."""

from __future__ import annotations

import pytest

from rllib_kfcpo import PPOLagConfig
from rllib_kfcpo.envs.toy import ACTION_COST_ENV
from rllib_kfcpo.safe.lagrange import LagrangeMultiplier


def test_multiplier_rises_above_the_limit_and_returns_to_zero_below():
    lam = LagrangeMultiplier(init=1e-3, lr=0.035)
    values = [lam.update(episode_cost=40.0, cost_limit=25.0) for _ in range(20)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    below = [lam.update(episode_cost=10.0, cost_limit=25.0) for _ in range(200)]
    # Adam's momentum may carry lambda up for a step or two; then it falls to 0.
    peak = below.index(max(below))
    assert peak <= 10
    assert all(b <= a for a, b in zip(below[peak:], below[peak + 1:], strict=False))
    assert below[-1] == 0.0  # projected onto [0, inf): never negative
    assert min(below) >= 0.0


def test_multiplier_ignores_unknown_cost_and_validates():
    lam = LagrangeMultiplier()
    assert lam.update(float("nan"), 25.0) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lagrangian_multiplier_lr"):
        LagrangeMultiplier(lr=0.0)


def test_multiplier_state_round_trip():
    lam = LagrangeMultiplier()
    for _ in range(5):
        lam.update(30.0, 25.0)
    other = LagrangeMultiplier()
    other.load_state_dict(lam.state_dict())
    assert other.update(30.0, 25.0) == lam.update(30.0, 25.0)


def test_ppolag_multiplier_follows_the_action_controlled_cost(ray_local):
    """ActionCost: cost 1[a>0] per step; a random policy pays ~25 per 50-step episode."""
    config = (
        PPOLagConfig()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=1, rollout_fragment_length=200)
        .training(train_batch_size=400, minibatch_size=200, num_epochs=2, cost_limit=5.0,
                  lagrangian_multiplier_lr=0.1)
    )
    algo = config.build_algo()
    try:
        lams, costs = [], []
        for _ in range(4):
            result = algo.train()
            lams.append(result["learners"]["default_policy"]["lagrange_multiplier"])
            costs.append(result["env_runners"]["episode_cost_mean"])
    finally:
        algo.stop()
    assert all(c > 5.0 for c in costs)
    assert all(b > a for a, b in zip(lams, lams[1:], strict=False)), lams
