"""Sampling efficiency: RLlib env runners vs the raw single-process env step rate.

For each env and each layout (``R`` env runners x ``V`` vectorised envs per runner),
measures in one run: the raw rate of one process stepping the env with random actions
(resets included, measured right before the layout so that load from other processes hits
both alike), then the rate of the env runners (sampling only: every runner's ``sample()``
in parallel) and the rate of whole KFCPO training iterations (sampling + learner update +
weight sync), and prints both as ratios to ``R x raw``:

    .venv/bin/python bench/sampling.py                       # PointGoal1 + HalfCheetah
    .venv/bin/python bench/sampling.py --layouts 1x1,1x4,2x4 --envs SafetyPointGoal1-v0
    .venv/bin/python bench/sampling.py --smoke               # tiny, for the test suite
    .venv/bin/python bench/sampling.py --rllib-path          # + RLlib's per-step path
    .venv/bin/python bench/sampling.py --envs SafetyPointGoal1-v0 --layouts 1x8 \
        --reuse-compiled-model both --fast-observations both  # today vs before, A/B

Navigation envs are measured with the ``reuse_compiled_model`` and ``fast_observations``
settings chosen (both on, the package defaults, unless told otherwise; ``both`` measures
each layout with each setting, one right after the other).

``--rllib-path`` measures each layout a second time, right after, with RLlib's own
per-step path instead of the package's sampling fixes (connector timers on every call,
``connector_timing(1)``; the module's forward passes with RLlib's ``eval()``/``train()``
toggling): the before/after comparison of docs/benchmarks.md, section 2, in one run.

``R x raw`` is only a ceiling when the machine has at least ``R`` free cores: the script
prints ``nproc`` and the load average so the reader can tell.
"""

from __future__ import annotations

import argparse
import os
import time

import ray
from ray.rllib.core.rl_module.torch import TorchRLModule

from rllib_kfcpo.modules.safe_actor_critic import SafeActorCriticTorchModule


class RLlibForwardModule(SafeActorCriticTorchModule):
    """Our module with RLlib's own forward passes (per-call eval()/train()): the old path."""

    forward_exploration = TorchRLModule.forward_exploration
    forward_inference = TorchRLModule.forward_inference


def raw_rate(env_id: str, steps: int, env_config: dict, seed: int = 0) -> float:
    """Env steps per second of one process, random actions, resets included."""
    from rllib_kfcpo.envs import make_safety_env

    env = make_safety_env(env_id, env_config)
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
                  iterations: int, env_config: dict, rllib_path: bool = False
                  ) -> tuple[float, float]:
    """(sampling-only steps/s, whole-iteration steps/s) of a KFCPO algorithm.

    ``rllib_path``: RLlib's per-step path instead of the package's sampling fixes (see the
    module docstring); the sampled data is the same either way.
    """
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_kfcpo import KFCPOConfig

    config = (
        KFCPOConfig()
        .environment(env_id, env_config=env_config)
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs_per_runner,
                     rollout_fragment_length="auto")
        .training(train_batch_size=steps, minibatch_size=min(2000, steps), num_epochs=1)
    )
    if rllib_path:
        config.connector_timing(1).rl_module(
            rl_module_spec=RLModuleSpec(module_class=RLlibForwardModule))
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
    """Parses the arguments and prints one row per (env, layout)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--envs", default="SafetyPointGoal1-v0,SafetyHalfCheetahVelocity-v1")
    parser.add_argument("--layouts", default="1x1,1x2,1x4,1x8,2x1,2x4",
                        help="comma-separated RxV: env runners x envs per runner")
    parser.add_argument("--steps", type=int, default=8000,
                        help="steps per sampling measurement and per training iteration")
    parser.add_argument("--iterations", type=int, default=2,
                        help="timed training iterations (after one warm-up iteration)")
    parser.add_argument("--reuse-compiled-model", choices=("off", "on", "both"), default="both",
                        help="navigation envs' fast reset (rllib_kfcpo.envs.fast_reset): "
                             "measure without it, with it, or both (default)")
    parser.add_argument("--fast-observations", choices=("off", "on", "both"), default="on",
                        help="navigation envs' vectorised observation/reward/cost code "
                             "(rllib_kfcpo.envs.fast_obs): without it, with it (default), "
                             "or both, each layout measured with both right after another")
    parser.add_argument("--rllib-path", action="store_true",
                        help="also measure every layout with RLlib's per-step path (the "
                             "state before the package's sampling fixes), right after")
    args = parser.parse_args()
    import rllib_kfcpo  # noqa: F401

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    envs = ["SafetyHalfCheetahVelocity-v1"] if args.smoke else args.envs.split(",")
    raw_steps, steps, iterations = (500, 400, 1) if args.smoke else (
        6000, args.steps, args.iterations)
    layouts = [(1, 1), (2, 1)] if args.smoke else [
        tuple(int(x) for x in layout.split("x")) for layout in args.layouts.split(",")]
    print(f"nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start; "
          f"{steps} steps per measurement, {iterations} training iteration(s)", flush=True)
    print(f"{'env':>30} | {'reuse':>5} | {'fast':>4} | {'R':>2} | {'V':>2} | {'raw/s':>8} | "
          f"{'sample/s':>9} | {'ratio':>6} | {'iter/s':>8} | {'ratio':>6}"
          + (f" | {'rllib sample/s':>14} | {'ratio':>6} | {'rllib iter/s':>12} | "
             f"{'ratio':>6}" if args.rllib_path else ""), flush=True)
    reuse_modes = {"off": [False], "on": [True], "both": [False, True]}[
        args.reuse_compiled_model]
    fast_modes = {"off": [False], "on": [True], "both": [False, True]}[args.fast_observations]
    for env_id in envs:
        # Only navigation tasks rebuild their model on reset; velocity tasks: one row each.
        velocity = "Velocity" in env_id
        modes = [(r, f) for r in (reuse_modes if not velocity else [False])
                 for f in (fast_modes if not velocity else [False])]
        for (reuse, fast), (runners, vec) in ((m, layout) for layout in layouts
                                              for m in modes):
            env_config = ({} if velocity else
                          {"reuse_compiled_model": reuse, "fast_observations": fast})
            raw = raw_rate(env_id, raw_steps, env_config)
            sampling, whole = sampler_rates(env_id, runners, vec, steps, iterations,
                                            env_config)
            row = (f"{env_id:>30} | {'on' if reuse else 'off':>5} | "
                   f"{'on' if fast else 'off':>4} | {runners:>2} | "
                   f"{vec:>2} | {raw:8.0f} | {sampling:9.0f} | "
                   f"{sampling / (runners * raw):6.2f} | {whole:8.0f} | "
                   f"{whole / (runners * raw):6.2f}")
            if args.rllib_path:
                old_sampling, old_whole = sampler_rates(
                    env_id, runners, vec, steps, iterations, env_config, rllib_path=True)
                row += (f" | {old_sampling:14.0f} | {old_sampling / (runners * raw):6.2f}"
                        f" | {old_whole:12.0f} | {old_whole / (runners * raw):6.2f}")
            print(row, flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end; target: sample/s >= 0.80 x "
          "(R x raw)")
    ray.shutdown()


if __name__ == "__main__":
    main()
