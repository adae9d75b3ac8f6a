"""Roll out a trained checkpoint and report episode return and episode cost.

Training-time ``episode_cost_mean`` averages the latest iteration's episodes (and Jc,
``episode_cost_window_mean``, the last 100) of a *stochastic* policy whose weights changed
during those episodes; :func:`evaluate_checkpoint` rolls out
one fixed policy (deterministic by default), so the two numbers differ by design.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def evaluate_checkpoint(checkpoint: str | Path, *, episodes: int = 5, seed: int = 0,
                        explore: bool = False,
                        configure: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Loads a checkpoint of any rllib_kfcpo algorithm and runs ``episodes`` episodes.

    The observation filter and module weights are those saved in the checkpoint.
    ``configure``, if given, may change the (unfrozen) config of the one local env runner
    before it is built: :func:`rllib_kfcpo.video.record_video` sets the render mode and
    its frame callbacks there. The report has the mean and std of return and cost, and
    ``episode_returns`` / ``episode_costs`` (one number per episode, in order).
    """
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    import rllib_kfcpo  # noqa: F401  (registration)

    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint directory at {str(path)!r}.")
    if episodes <= 0:
        raise ValueError(f"episodes={episodes} is invalid: it must be a positive integer.")
    algo = Algorithm.from_checkpoint(str(path.resolve()))
    runner = None
    try:
        config = algo.config.copy(copy_frozen=False)
        config.env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        config.debugging(seed=seed)
        if configure is not None:
            configure(config)
        runner = SingleAgentEnvRunner(config=config)
        runner.set_state(algo.env_runner.get_state())
        done = runner.sample(num_episodes=episodes, explore=explore)
        returns = [float(np.sum(e.get_rewards())) for e in done]
        costs = [float(sum(i.get("cost", 0.0) for i in e.get_infos()[1:])) for e in done]
    finally:
        if runner is not None:
            runner.stop()
        algo.stop()
    limit = float(getattr(algo.config, "cost_limit", math.nan))
    return {
        "checkpoint": str(path),
        "env": str(algo.config.env),
        "episodes": len(done),
        "explore": explore,
        "episode_return_mean": float(np.mean(returns)),
        "episode_return_std": float(np.std(returns)),
        "episode_cost_mean": float(np.mean(costs)),
        "episode_cost_std": float(np.std(costs)),
        "cost_limit": limit,
        "within_limit": bool(np.mean(costs) <= limit) if math.isfinite(limit) else None,
        "episode_returns": returns,
        "episode_costs": costs,
    }
