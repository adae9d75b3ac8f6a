"""Update cost of K-FAC: one KFCPO learner update vs one PPO-Lagrangian (Adam) update.

Same batch, same network, same minibatching, measured side by side in one run:

    .venv/bin/python bench/update_cost.py            # 64x64 and 256x256, prints ratios
    .venv/bin/python bench/update_cost.py --smoke    # tiny, for the test suite

The KFCPO figure includes its critic step and its share spent in factor capture,
decomposition, preconditioning and direction manipulation (``kfac_seconds``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_kfcpo import KFCPOConfig, PPOLagConfig


def episodes(obs_dim: int, act_dim: int, n_episodes: int, length: int, seed: int = 0):
    """Random episodes with a consistent behaviour policy (mean 0, log-std -0.5)."""
    rng = np.random.default_rng(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (act_dim,), np.float32)
    out = []
    for _ in range(n_episodes):
        actions = rng.normal(0, np.exp(-0.5), size=(length, act_dim)).astype(np.float32)
        logp = (-0.5 * (actions / np.exp(-0.5)) ** 2 + 0.5 - 0.5 * np.log(2 * np.pi)).sum(-1)
        out.append(SingleAgentEpisode(
            observation_space=obs_space, action_space=act_space,
            observations=list(rng.normal(size=(length + 1, obs_dim)).astype(np.float32)),
            actions=list(actions), rewards=list(rng.normal(size=length)),
            infos=[{}] + [{"cost": float(c)} for c in rng.integers(0, 2, size=length)],
            truncated=True, len_lookback_buffer=0,
            extra_model_outputs={
                Columns.ACTION_DIST_INPUTS: list(np.tile(
                    np.concatenate([np.zeros(act_dim), np.full(act_dim, -0.5)]).astype(
                        np.float32), (length, 1))),
                Columns.ACTION_LOGP: list(logp.astype(np.float32)),
            },
        ))
    return out, obs_space, act_space


def time_update(config, eps, spaces, repeats: int, minibatch: int, epochs: int):
    learner = config.build_learner(spaces=spaces)
    ts = {"safe_episode_cost_mean": 20.0}
    learner.update(episodes=eps, timesteps=ts, num_epochs=1, minibatch_size=minibatch)  # warm
    times, kfac_share = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = learner.update(episodes=eps, timesteps=ts, num_epochs=epochs,
                                minibatch_size=minibatch)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        stats = result["default_policy"]
        if "kfac_seconds" in stats:
            steps = stats["policy_steps"] + stats["kl_rollbacks"]
            kfac_share.append(float(stats["kfac_seconds"]) * float(steps) / elapsed)
    return statistics.median(times), (statistics.median(kfac_share) if kfac_share else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    sizes = [[16, 16]] if args.smoke else [[64, 64], [256, 256]]
    n_eps, length, minibatch, epochs, repeats = (2, 50, 50, 1, 1) if args.smoke else (
        8, 1000, 2000, 2, 3)
    eps, obs_space, act_space = episodes(60, 2, n_eps, length)  # PointGoal1-like dims
    spaces = {"default_policy": (obs_space, act_space)}
    print(f"batch {n_eps * length} steps, minibatch {minibatch}, {epochs} epoch(s), "
          f"obs 60, act 2, median of {repeats}")
    print(f"{'network':>10} | {'PPOLag s':>9} | {'KFCPO s':>9} | {'KFCPO/PPOLag':>12} | "
          f"{'K-FAC share':>11}")
    for hidden in sizes:
        model = {"fcnet_hiddens": hidden}
        common = dict(train_batch_size=n_eps * length, minibatch_size=minibatch,
                      num_epochs=epochs)
        ppo = PPOLagConfig().training(**common).rl_module(model_config=model)
        kfcpo = KFCPOConfig().training(target_kl=1e9, **common).rl_module(model_config=model)
        t_ppo, _ = time_update(ppo, eps, spaces, repeats, minibatch, epochs)
        t_kf, share = time_update(kfcpo, eps, spaces, repeats, minibatch, epochs)
        print(f"{'x'.join(map(str, hidden)):>10} | {t_ppo:9.3f} | {t_kf:9.3f} | "
              f"{t_kf / t_ppo:12.2f} | {share:11.1%}")


if __name__ == "__main__":
    main()
