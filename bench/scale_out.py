"""Scale-out check for a bigger machine: env-runner scaling and the GPU learner update.

One command, meant for a many-core machine with a GPU (it runs anywhere, measuring what
fits and saying what it skipped):

    .venv/bin/python bench/scale_out.py                 # PointGoal1, R = 1,2,4,8,14 x V = 8
    .venv/bin/python bench/scale_out.py --runners 1,2 --envs-per-runner 4   # a small machine
    .venv/bin/python bench/scale_out.py --smoke         # tiny, for the test suite

1. **Env-runner scaling.** For each ``R`` (env runners, one CPU each) a KFCPO algorithm is
   built with ``R x V`` envs and every runner's ``sample()`` runs in parallel (sampling
   only, after a warm-up sample); printed: steps/s, the ratio to the 1-runner rate and the
   per-runner efficiency (ratio / R, 1.0 = perfect scaling). A layout whose runners do not
   fit in the machine's cores (``R + 1 > nproc``: the driver needs one) is skipped with a
   line saying so, unless ``--oversubscribe``.
2. **GPU learner update.** Where CUDA is available: one KFCPO learner update vs one
   PPO-Lagrangian update on the GPU (one local learner, ``num_gpus_per_learner=1``), same
   synthetic batch and minibatching as ``bench/update_cost.py`` (medians of interleaved
   repeats). Without CUDA the section prints that it was skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sampling_rate(env_id: str, runners: int, envs_per_runner: int, steps: int,
                  env_config: dict) -> float:
    """Env steps/s of ``runners`` remote env runners sampling in parallel."""
    from rllib_kfcpo import KFCPOConfig

    config = (
        KFCPOConfig()
        .environment(env_id, env_config=env_config)
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs_per_runner,
                     num_cpus_per_env_runner=1, rollout_fragment_length="auto")
        .training(train_batch_size=max(steps, 200), minibatch_size=min(2000, max(steps, 200)),
                  num_epochs=1)
    )
    algo = config.build_algo()
    try:
        per_runner = max(1, steps // runners)
        algo.env_runner_group.foreach_env_runner(  # warm-up: first resets, first forward
            lambda r: len(r.sample(num_timesteps=50 * envs_per_runner)),
            local_env_runner=False)
        started = time.perf_counter()
        algo.env_runner_group.foreach_env_runner(
            lambda r: len(r.sample(num_timesteps=per_runner)), local_env_runner=False)
        return per_runner * runners / (time.perf_counter() - started)
    finally:
        algo.stop()


def gpu_update(hidden: list[int], repeats: int, smoke: bool) -> dict[str, float] | None:
    """Median seconds of a KFCPO and a PPOLag update on the GPU; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    from update_cost import TIMESTEPS, episodes

    from rllib_kfcpo import KFCPOConfig, PPOLagConfig

    n_eps, length, minibatch, epochs = (2, 100, 100, 1) if smoke else (8, 1000, 2000, 2)
    eps, obs_space, act_space = episodes(60, 2, n_eps, length)
    spaces = {"default_policy": (obs_space, act_space)}
    common = dict(train_batch_size=n_eps * length, minibatch_size=minibatch,
                  num_epochs=epochs)
    learners = {}
    for name, config in (("PPOLag", PPOLagConfig().training(**common)),
                         ("KFCPO", KFCPOConfig().training(target_kl=1e9, **common))):
        config = config.rl_module(model_config={"fcnet_hiddens": hidden}).learners(
            num_learners=0, num_gpus_per_learner=1)
        learner = config.build_learner(spaces=spaces)
        learner.update(episodes=eps, timesteps=TIMESTEPS, num_epochs=1,
                       minibatch_size=minibatch)
        learners[name] = learner
    times: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(repeats):
        for name, learner in learners.items():
            torch.cuda.synchronize()
            started = time.perf_counter()
            learner.update(episodes=eps, timesteps=TIMESTEPS, num_epochs=epochs,
                           minibatch_size=minibatch)
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - started)
    device = str(next(learners["KFCPO"].module["default_policy"].parameters()).device)
    return {"ppo": statistics.median(times["PPOLag"]),
            "kfcpo": statistics.median(times["KFCPO"]),
            "ratio": statistics.median(k / p for k, p in zip(times["KFCPO"], times["PPOLag"],
                                                             strict=True)),
            "device": device}


def main() -> None:
    """Parses the arguments, prints the scaling table and the GPU update rows."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--runners", default="1,2,4,8,14")
    parser.add_argument("--envs-per-runner", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps per sampling measurement (default 2000 x R)")
    parser.add_argument("--fast-observations", choices=("on", "off"), default="on")
    parser.add_argument("--oversubscribe", action="store_true",
                        help="also run layouts with more runners than free cores")
    parser.add_argument("--sizes", default="64x64,256x256", help="GPU update networks")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import rllib_kfcpo  # noqa: F401  (registers the envs)

    nproc = os.cpu_count() or 1
    # --smoke: one runner, and one layout that never fits (to exercise the skip line).
    runner_counts = [1, nproc] if args.smoke else [int(r) for r in args.runners.split(",")]
    vec = 1 if args.smoke else args.envs_per_runner
    env_config = {"fast_observations": args.fast_observations == "on"}
    ray.init(num_cpus=max([nproc, *runner_counts]) + 1, include_dashboard=False,
             log_to_driver=False)
    print(f"nproc {nproc}, load average {os.getloadavg()[0]:.2f} at start; "
          f"env {args.env}, fast_observations {args.fast_observations}", flush=True)
    print(f"{'R':>3} | {'V':>2} | {'steps/s':>9} | {'ratio to R=1':>12} | "
          f"{'efficiency':>10}", flush=True)
    base = None
    for runners in runner_counts:
        if runners + 1 > nproc and not args.oversubscribe:
            print(f"{runners:>3} | {vec:>2} | skipped: {runners} runners + the driver need "
                  f"{runners + 1} cores, this machine has {nproc}", flush=True)
            continue
        steps = 200 if args.smoke else (args.steps or 2000 * runners)
        rate = sampling_rate(args.env, runners, vec, steps, env_config)
        base = base or (rate if runners == 1 else None)
        ratio = rate / base if base else float("nan")
        print(f"{runners:>3} | {vec:>2} | {rate:9.0f} | {ratio:12.2f} | "
              f"{ratio / runners:10.2f}", flush=True)
    ray.shutdown()
    print(f"load average {os.getloadavg()[0]:.2f} after the scaling rows", flush=True)
    sizes = ["16x16"] if args.smoke else args.sizes.split(",")
    for size in sizes:
        hidden = [int(h) for h in size.split("x")]
        out = gpu_update(hidden, 2 if args.smoke else args.repeats, args.smoke)
        if out is None:
            print(f"GPU update {size}: skipped: CUDA is not available on this machine",
                  flush=True)
            continue
        print(f"GPU update {size} on {out['device']}: PPOLag {out['ppo']:.4f} s, "
              f"KFCPO {out['kfcpo']:.4f} s, KFCPO/PPOLag {out['ratio']:.2f}", flush=True)


if __name__ == "__main__":
    main()
