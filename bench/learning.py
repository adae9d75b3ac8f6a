"""Learning comparison: KFCPO vs PPO-Lagrangian (and KFCPO ablations), same budget.

Trains every (algorithm, env, seed) with the same step budget through Ray Tune, then
writes a results table (final return and cost as mean +- std over seeds, fraction of
seeds within the limit; "final" = mean of the last 3 reported iterations) and learning
curves (PNG, one per env):

    .venv/bin/python bench/learning.py --reuse-compiled-model  # 3 seeds x 2 envs x 300k
    .venv/bin/python bench/learning.py --ablations --envs SafetyPointGoal1-v0
    .venv/bin/python bench/learning.py --full               # OmniSafe protocol, a cluster
    .venv/bin/python bench/learning.py --smoke              # seconds, for the test suite

Every variant gets the same envs, seeds, step budget, batch size and env runners; only
the algorithm (and, for ablations, one KFCPO setting) differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

#: The OmniSafe on-policy benchmark envs (docs/benchmarks.md), used by ``--full``.
FULL_ENVS = (
    "SafetyAntVelocity-v1", "SafetyHalfCheetahVelocity-v1", "SafetyHopperVelocity-v1",
    "SafetyWalker2dVelocity-v1", "SafetyPointGoal1-v0", "SafetyCarGoal1-v0",
)

ABLATIONS = {
    "KFCPO-no-projection": {"projection": "none"},
    "KFCPO-hard-switch": {"margin_schedule": "hard"},
    "KFCPO-no-rollback": {"kl_rollback": False},
    "KFCPO-rollback-no-retry": {"rollback_backtracks": 0},
    "KFCPO-plain-gradient": {"use_kfac": False},
}


def variants(ablations: bool, extra: list[str] = (),
             only: list[str] | None = None) -> dict[str, tuple[str, dict]]:
    """Variant name -> (algorithm, config overrides).

    ``extra`` entries are ``NAME=JSON`` KFCPO variants (``'KFCPO-t03={"margin_temperature":
    0.3}'``); ``only`` keeps the named variants (all when None).
    """
    out = {"PPOLag": ("PPOLag", {}), "KFCPO": ("KFCPO", {})}
    if ablations:
        out.update({name: ("KFCPO", cfg) for name, cfg in ABLATIONS.items()})
    for entry in extra:
        name, sep, overrides = entry.partition("=")
        try:
            parsed = json.loads(overrides) if sep else None
        except json.JSONDecodeError:
            parsed = None
        if not name or not isinstance(parsed, dict):
            raise SystemExit(f"--variant {entry!r} is invalid: use NAME='{{\"key\": value}}' "
                             "(a JSON object of KFCPO settings).")
        out[name] = ("KFCPO", parsed)
    if only is not None:
        unknown = sorted(set(only) - set(out))
        if unknown:
            raise SystemExit(f"--only names unknown variants {unknown}; known: {sorted(out)}")
        out = {name: v for name, v in out.items() if name in only}
    return out


def summarise(trials: list[dict], limit: float) -> dict[str, float]:
    """Final return/cost (mean of the last 3 iterations) as mean and std over seeds."""
    finals_r = [float(np.nanmean(t["return"][-3:])) for t in trials]
    finals_c = [float(np.nanmean(t["cost"][-3:])) for t in trials]
    return {
        "return_mean": float(np.mean(finals_r)), "return_std": float(np.std(finals_r)),
        "cost_mean": float(np.mean(finals_c)), "cost_std": float(np.std(finals_c)),
        "within_limit": float(np.mean([c <= limit for c in finals_c])),
        "seeds": len(trials),
    }


def main() -> None:
    """Parses the arguments, trains every variant, prints and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--envs", default="SafetyPointGoal1-v0,SafetyHalfCheetahVelocity-v1")
    parser.add_argument("--seeds", default="0,5,10")
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=8_000, help="train_batch_size")
    parser.add_argument("--runners", type=int, default=1, help="num_env_runners")
    parser.add_argument("--envs-per-runner", type=int, default=4,
                        help="num_envs_per_env_runner")
    parser.add_argument("--reuse-compiled-model", action="store_true",
                        help="navigation envs keep their compiled model on reset "
                             "(rllib_kfcpo.envs.fast_reset; same episodes, faster resets)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="Ray logical CPUs (default: enough for every seed at once)")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--variant", action="append", default=[],
                        help="extra KFCPO variant NAME='{\"setting\": value}' (repeatable)")
    parser.add_argument("--only", default=None,
                        help="comma-separated variant names to run (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="OmniSafe protocol: 5 seeds, 1e7 steps, 20k steps/iteration")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="bench_results/learning")
    args = parser.parse_args()

    import ray

    import rllib_kfcpo  # noqa: F401  (registers envs and algorithms)
    from rllib_kfcpo.cli.experiment import Experiment
    from rllib_kfcpo.cli.plot import collect, plot_learning_curves
    from rllib_kfcpo.cli.run import run_experiment

    seeds = [int(s) for s in args.seeds.split(",")]
    steps, batch, runners = args.steps, args.batch, args.runners
    envs = args.envs.split(",")
    if args.full:
        seeds, steps, batch, runners = [0, 5, 10, 15, 20], 10_000_000, 20_000, 8
        envs = list(FULL_ENVS)
    if args.smoke:
        envs, seeds, steps, batch, runners = ["rllib_kfcpo/ActionCost-v0"], [0], 400, 200, 1
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        # Logical CPUs: each trial needs 1 + runners; without this a 2-core machine could
        # never start a 2-runner trial. Oversubscribing only shares the cores.
        ray.init(num_cpus=args.num_cpus or max(os.cpu_count() or 1,
                                               (1 + runners) * len(seeds)),
                 include_dashboard=False, log_to_driver=False)
    out = Path(args.out).resolve()
    table: dict[str, dict[str, dict]] = {}
    for env in envs:
        env_dir = out / env.replace("/", "_")
        only = args.only.split(",") if args.only else None
        for name, (algo, extra) in variants(args.ablations, args.variant, only).items():
            config = {"cost_limit": 25.0, "train_batch_size": batch, "num_env_runners": runners,
                      "num_envs_per_env_runner": args.envs_per_runner, **extra}
            if args.reuse_compiled_model:
                config["env_config"] = {"reuse_compiled_model": True}
            if algo == "KFCPO":
                config.update(minibatch_size=min(2000, batch), num_epochs=10)
            else:
                config.update(minibatch_size=min(64 * 16, batch), num_epochs=10)
            if args.smoke:
                config.update(minibatch_size=100, num_epochs=1, cost_limit=5.0)
            exp = Experiment(name=name, run=algo, env=env, config=config, seeds=seeds,
                             stop={"num_env_steps_sampled_lifetime": steps})
            run_experiment(exp, storage_path=str(env_dir))
        groups = collect([env_dir])
        limit = 5.0 if args.smoke else 25.0  # the cost_limit every variant trains with
        table[env] = {name: summarise(trials, limit) for name, trials in groups.items()}
        plot_learning_curves([env_dir], env_dir / "learning_curves.png")
    (out / "results.json").write_text(json.dumps(table, indent=2))
    print(f"\nsteps per run {steps:,}, seeds {seeds}, cost limit {limit:g}")
    print(f"{'env':>30} | {'algorithm':>22} | {'return':>17} | {'cost':>15} | within")
    for env, rows in table.items():
        base = rows.get("PPOLag", {}).get("return_mean", math.nan)
        for name, r in rows.items():
            rel = (r["return_mean"] / base if math.isfinite(base) and base > 0
                   and r["return_mean"] > 0 else math.nan)
            print(f"{env:>30} | {name:>22} | {r['return_mean']:8.2f} +- {r['return_std']:5.2f} |"
                  f" {r['cost_mean']:6.2f} +- {r['cost_std']:5.2f} | {r['within_limit']:.2f}"
                  + (f"  (return x{rel:.2f} PPOLag)" if math.isfinite(rel) else ""))


if __name__ == "__main__":
    main()
