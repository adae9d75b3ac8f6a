"""KFCPO on a discrete-action env with a cost in ``info``: CartPole that must stay centred.

``rllib_kfcpo/CartPoleCost-v0`` is gymnasium's CartPole (``Discrete(2)`` actions, reward 1
per step the pole is up, episodes truncated at 200 steps) with ``info["cost"] = 1`` for
every step the cart ends farther than 0.5 from the centre (``CartPoleCostEnv`` in
``rllib_kfcpo/envs/toy.py``: ten lines, the pattern for any env of your own). The policy
is categorical; K-FAC takes its statistics from the categorical score ``onehot(a) - p``.

    # about a minute on 2 CPUs (30 iterations of 2000 steps): return and cost per iteration
    .venv/bin/python examples/discrete_cartpole_cost.py
    # PPO-Lagrangian on the same env, for comparison
    .venv/bin/python examples/discrete_cartpole_cost.py --algo PPOLag

Your own env: register a creator (``ray.tune.register_env("MyEnv-v0", make)``) whose env
has a ``Discrete`` (or ``Box``) action space and returns the step's cost in
``info["cost"]``, then ``config.environment("MyEnv-v0")``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

ENV = "rllib_kfcpo/CartPoleCost-v0"


def make_config(algo: str = "KFCPO", *, cost_limit: float = 10.0, seed: int = 0,
                train_batch_size: int = 2000) -> Any:
    """A small config of ``algo`` (KFCPO, PPOLag, PPOPIDLag or CPO) on CartPoleCost-v0."""
    import rllib_kfcpo

    configs = {"KFCPO": rllib_kfcpo.KFCPOConfig, "PPOLag": rllib_kfcpo.PPOLagConfig,
               "PPOPIDLag": rllib_kfcpo.PPOPIDLagConfig, "CPO": rllib_kfcpo.CPOConfig}
    config = (
        configs[algo]()
        .environment(ENV)
        .env_runners(num_env_runners=1, rollout_fragment_length="auto")
        # Jc = the latest iteration's mean episode cost: the default 100-episode window
        # (OmniSafe's) lags by several iterations of this short run and makes it oscillate.
        .training(train_batch_size=train_batch_size, cost_limit=cost_limit,
                  cost_window_episodes=0)
        .rl_module(model_config={"fcnet_hiddens": [32, 32]})
        .debugging(seed=seed)
    )
    if algo == "KFCPO":
        config.training(minibatch_size=train_batch_size // 4, num_epochs=4,
                        trust_region_kl=5e-3)
    elif algo in ("PPOLag", "PPOPIDLag"):
        config.training(minibatch_size=train_batch_size // 8, num_epochs=6)
    return config


def train(iterations: int = 30, *, algo: str = "KFCPO", seconds: float = math.inf,
          verbose: bool = True, **config: Any) -> list[dict[str, float]]:
    """Trains ``algo`` for ``iterations`` iterations (or until ``seconds`` have passed) and
    returns each iteration's episode return and cost means (NaN before an episode ends)."""
    algorithm = make_config(algo, **config).build_algo()
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    try:
        for i in range(iterations):
            runners = algorithm.train()["env_runners"]
            row = {"iteration": i + 1,
                   "return": float(runners.get("episode_return_mean", math.nan)),
                   "cost": float(runners.get("episode_cost_mean", math.nan)),
                   "seconds": time.perf_counter() - started}
            history.append(row)
            if verbose:
                print(f"iter {row['iteration']:3d}  return {row['return']:7.1f}  "
                      f"cost {row['cost']:6.2f}  ({row['seconds']:5.1f} s)", flush=True)
            if row["seconds"] > seconds:
                break
    finally:
        algorithm.stop()
    return history


def main(argv: list[str] | None = None) -> int:
    """Trains and prints return and cost per iteration."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="KFCPO",
                        choices=["KFCPO", "PPOLag", "PPOPIDLag", "CPO"])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=math.inf,
                        help="stop after the iteration that passes this many seconds")
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        history = train(args.iterations, algo=args.algo, seconds=args.seconds,
                        cost_limit=args.cost_limit, seed=args.seed)
    finally:
        ray.shutdown()
    tail = history[-5:]
    mean_return = sum(h["return"] for h in tail) / len(tail)
    mean_cost = sum(h["cost"] for h in tail) / len(tail)
    print(f"{args.algo}: return {history[0]['return']:.1f} at the first iteration, "
          f"{mean_return:.1f} (cost {mean_cost:.2f}, limit {args.cost_limit}) on average over "
          f"the last {len(tail)}, {history[-1]['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
