"""Sampling efficiency: RLlib env runners vs the raw single-process env step rate.

For each env, measures in one run: the raw rate of one process stepping the env with
random actions (resets included), then the rate of `R` env runners with `V` vectorised
envs each (sampling only, the runners' `sample()` in parallel), and the rate of whole
KFCPO training iterations, and prints ratios to ``R x raw``:

    .venv/bin/python bench/sampling.py                       # PointGoal1 + HalfCheetah
    .venv/bin/python bench/sampling.py --smoke               # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import time

import ray


def raw_rate(env_id: str, steps: int, seed: int = 0) -> float:
    """Env steps per second of one process, random actions, resets included."""
    from rllib_kfcpo.envs import make_safety_env

    env = make_safety_env(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def sampler_rates(env_id: str, runners: int, envs_per_runner: int, steps: int,
                  iterations: int) -> tuple[float, float]:
    """(sampling-only steps/s, whole-iteration steps/s) of a KFCPO algorithm."""
    from rllib_kfcpo import KFCPOConfig

    config = (
        KFCPOConfig()
        .environment(env_id)
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs_per_runner,
                     rollout_fragment_length="auto")
        .training(train_batch_size=steps, minibatch_size=min(2000, steps), num_epochs=1)
    )
    algo = config.build_algo()
    try:
        per_runner = steps // runners
        algo.env_runner_group.foreach_env_runner(  # warm-up (first resets)
            lambda r: len(r.sample(num_timesteps=100)), local_env_runner=False)
        start = time.perf_counter()
        algo.env_runner_group.foreach_env_runner(
            lambda r: len(r.sample(num_timesteps=per_runner)), local_env_runner=False)
        sampling = per_runner * runners / (time.perf_counter() - start)
        algo.train()  # warm-up iteration
        start = time.perf_counter()
        for _ in range(iterations):
            algo.train()
        whole = steps * iterations / (time.perf_counter() - start)
    finally:
        algo.stop()
    return sampling, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--envs", default="SafetyPointGoal1-v0,SafetyHalfCheetahVelocity-v1")
    args = parser.parse_args()
    import rllib_kfcpo  # noqa: F401

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    envs = ["SafetyHalfCheetahVelocity-v1"] if args.smoke else args.envs.split(",")
    raw_steps, steps, iterations = (500, 400, 1) if args.smoke else (6000, 8000, 2)
    layouts = [(1, 1), (2, 1)] if args.smoke else [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)]
    print(f"{'env':>30} | {'R':>2} | {'V':>2} | {'raw/s':>8} | {'sample/s':>9} | "
          f"{'ratio':>6} | {'iter/s':>8} | {'ratio':>6}")
    for env_id in envs:
        raw = raw_rate(env_id, raw_steps)
        for runners, vec in layouts:
            sampling, whole = sampler_rates(env_id, runners, vec, steps, iterations)
            print(f"{env_id:>30} | {runners:>2} | {vec:>2} | {raw:8.0f} | {sampling:9.0f} | "
                  f"{sampling / (runners * raw):6.2f} | {whole:8.0f} | "
                  f"{whole / (runners * raw):6.2f}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
