"""Raw env step rate: the fast navigation path vs safety-gymnasium's own code, side by side.

One process steps two copies of each env (``fast_observations`` on and off, both with the
compiled model reused, i.e. the package defaults otherwise), same seed and the same fixed
random actions, resets included (1,000-step episodes). The two are timed in alternating
blocks, ``--repeats`` times, so load from other processes hits both alike; printed: the
best block of each (wall clock) and their ratio, the median of the per-repeat ratios, and
the median steps per CPU second of this process (time the process was descheduled by
other load does not count, the steadiest figure on a shared machine) and its ratio:

    .venv/bin/python bench/env_speed.py                       # Goal1, CarGoal1, Button1
    .venv/bin/python bench/env_speed.py --envs SafetyPointPush1-v0 --steps 3000
    .venv/bin/python bench/env_speed.py --reuse-compiled-model off   # both recompile
    .venv/bin/python bench/env_speed.py --smoke               # tiny, for the test suite

``--baseline-reuse off`` times the upstream side without ``reuse_compiled_model`` as well
(safety-gymnasium exactly as released: the "before" of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

DEFAULT_ENVS = "SafetyPointGoal1-v0,SafetyCarGoal1-v0,SafetyPointButton1-v0"


def timed_block(env, actions: np.ndarray) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second of this process) of ``env`` over
    ``actions``, resetting at episode ends."""
    started, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return (len(actions) / (time.perf_counter() - started),
            len(actions) / (time.process_time() - cpu))


def compare(env_id: str, steps: int, repeats: int, reuse: bool, baseline_reuse: bool
            ) -> dict[str, float]:
    """Best-block steps/s of the fast and the upstream path, and their ratios."""
    from rllib_kfcpo.envs import make_safety_env

    envs = {
        "fast": make_safety_env(env_id, {"reuse_compiled_model": reuse}),
        "upstream": make_safety_env(env_id, {"reuse_compiled_model": baseline_reuse,
                                             "fast_observations": False}),
    }
    for env in envs.values():
        env.reset(seed=0)
    shape = envs["fast"].action_space.shape
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, *shape)).astype(np.float32)
    rates: dict[str, list[float]] = {name: [] for name in envs}
    cpu: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(repeats):
        for name, env in envs.items():
            wall_rate, cpu_rate = timed_block(env, actions)
            rates[name].append(wall_rate)
            cpu[name].append(cpu_rate)
    for env in envs.values():
        env.close()
    return {"fast": max(rates["fast"]), "upstream": max(rates["upstream"]),
            "ratio": max(rates["fast"]) / max(rates["upstream"]),
            "median_ratio": statistics.median(
                f / u for f, u in zip(rates["fast"], rates["upstream"], strict=True)),
            "cpu_fast": statistics.median(cpu["fast"]),
            "cpu_upstream": statistics.median(cpu["upstream"]),
            "cpu_ratio": statistics.median(cpu["fast"]) / statistics.median(cpu["upstream"])}


def main() -> None:
    """Parses the arguments and prints one row per env."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--envs", default=DEFAULT_ENVS)
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reuse-compiled-model", choices=("on", "off"), default="on")
    parser.add_argument("--baseline-reuse", choices=("same", "off"), default="same",
                        help="'off': the upstream side recompiles its model every reset")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # gymnasium's Box casts
    envs = ["SafetyPointGoal1-v0"] if args.smoke else args.envs.split(",")
    steps, repeats = (200, 2) if args.smoke else (args.steps, args.repeats)
    reuse = args.reuse_compiled_model == "on"
    baseline_reuse = reuse if args.baseline_reuse == "same" else False
    print(f"nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start; "
          f"{steps} steps per block, {repeats} alternating blocks per path; "
          f"reuse_compiled_model fast: {reuse}, upstream: {baseline_reuse}", flush=True)
    print(f"{'env':>24} | {'fast/s':>8} | {'upstream/s':>10} | {'ratio':>5} | "
          f"{'median ratio':>12} | {'fast/CPU s':>10} | {'upstream/CPU s':>14} | "
          f"{'CPU ratio':>9}", flush=True)
    for env_id in envs:
        out = compare(env_id, steps, repeats, reuse, baseline_reuse)
        print(f"{env_id:>24} | {out['fast']:8.0f} | {out['upstream']:10.0f} | "
              f"{out['ratio']:5.2f} | {out['median_ratio']:12.2f} | "
              f"{out['cpu_fast']:10.0f} | {out['cpu_upstream']:14.0f} | "
              f"{out['cpu_ratio']:9.2f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end", flush=True)


if __name__ == "__main__":
    main()
