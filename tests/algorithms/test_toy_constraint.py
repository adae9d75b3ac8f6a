"""The baselines on the reward-vs-cost toy (reward a, cost 1[a > 0]): where the cost ends.

Short runs on one local learner, Jc over a short window (one iteration's episodes) so the
constraint logic sees the current policy. Each test prints the per-iteration episode costs.
"""

from __future__ import annotations

from typing import Any

from rllib_kfcpo import CPOConfig, PPOLagConfig, PPOPIDLagConfig
from rllib_kfcpo.envs.toy import ACTION_COST_ENV


def episode_costs(config: Any, iterations: int) -> list[float]:
    algo = config.build_algo()
    try:
        return [float(algo.train()["env_runners"]["episode_cost_mean"])
                for _ in range(iterations)]
    finally:
        algo.stop()


def toy(config_cls: type, *, episode_len: int, episodes: int, limit: float) -> Any:
    return (
        config_cls()
        .environment(ACTION_COST_ENV, env_config={"episode_len": episode_len})
        .env_runners(num_env_runners=0, rollout_fragment_length=episode_len * episodes)
        .training(train_batch_size=episode_len * episodes, minibatch_size=100, num_epochs=5,
                  cost_limit=limit, cost_window_episodes=episodes)
        .reporting(metrics_num_episodes_for_smoothing=episodes)
        .debugging(seed=0)
    )


def test_cpo_ends_near_the_limit(ray_local):
    # The initial policy costs ~25 per 50-step episode; unconstrained it would reach 50.
    costs = episode_costs(toy(CPOConfig, episode_len=50, episodes=10, limit=35.0), 20)
    print("CPO episode costs (limit 35):", [round(c, 1) for c in costs])
    final = sum(costs[-5:]) / 5
    assert abs(final - 35.0) <= 4.0
    assert max(costs) <= 35.0 + 6.0


def test_pid_lagrangian_overshoots_less_than_lagrangian(ray_local):
    """Same seed, same PPO settings, OmniSafe's default multiplier settings for both. The
    cost starts (~100 per 200-step episode) below the limit 140 and the reward pushes it up;
    the PID reacts to the size of the violation, PPO-Lagrangian's Adam step does not.
    Only the first peak is compared: with these gains the PID then oscillates around the
    limit (a 50-iteration run of the same config swings between about 60 and 190, period
    about 30 iterations), while PPO-Lagrangian stays saturated at 200 in this budget."""
    runs = {}
    for name, cls in (("PPOLag", PPOLagConfig), ("PPOPIDLag", PPOPIDLagConfig)):
        config = toy(cls, episode_len=200, episodes=3, limit=140.0).training(lr=5e-4)
        runs[name] = episode_costs(config, 16)
    overshoot = {name: max(costs) - 140.0 for name, costs in runs.items()}
    for name, costs in runs.items():
        print(f"{name} episode costs (limit 140), overshoot {overshoot[name]:.1f}:",
              [round(c, 1) for c in costs])
    assert overshoot["PPOPIDLag"] < overshoot["PPOLag"] - 5.0
    pid = runs["PPOPIDLag"]
    assert pid[-1] < max(pid) - 5.0  # the PID has turned the cost back down
