"""Learning comparison: KFCPO vs PPO-Lagrangian (and KFCPO ablations), same budget.

Trains every (algorithm, env, seed) with the same step budget through Ray Tune, then
writes a results table (final return and cost as mean +- std over seeds, fraction of
seeds within the limit; "final" = mean of the last 3 reported iterations) and learning
curves (PNG, one per env):

    .venv/bin/python bench/learning.py                      # ~1 h here: 3 seeds x 2 envs
    .venv/bin/python bench/learning.py --ablations --envs SafetyPointGoal1-v0
    .venv/bin/python bench/learning.py --full               # OmniSafe protocol, a cluster
    .venv/bin/python bench/learning.py --smoke              # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

ABLATIONS = {
    "KFCPO-no-projection": {"projection": "none"},
    "KFCPO-hard-switch": {"margin_schedule": "hard"},
    "KFCPO-no-rollback": {"kl_rollback": False},
    "KFCPO-plain-gradient": {"use_kfac": False},
}


def variants(ablations: bool) -> dict[str, tuple[str, dict]]:
    out = {"PPOLag": ("PPOLag", {}), "KFCPO": ("KFCPO", {})}
    if ablations:
        out.update({name: ("KFCPO", cfg) for name, cfg in ABLATIONS.items()})
    return out


def summarise(trials: list[dict], limit: float) -> dict[str, float]:
    finals_r = [float(np.nanmean(t["return"][-3:])) for t in trials]
    finals_c = [float(np.nanmean(t["cost"][-3:])) for t in trials]
    return {
        "return_mean": float(np.mean(finals_r)), "return_std": float(np.std(finals_r)),
        "cost_mean": float(np.mean(finals_c)), "cost_std": float(np.std(finals_c)),
        "within_limit": float(np.mean([c <= limit for c in finals_c])),
        "seeds": len(trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--envs", default="SafetyPointGoal1-v0,SafetyHalfCheetahVelocity-v1")
    parser.add_argument("--seeds", default="0,5,10")
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--full", action="store_true",
                        help="OmniSafe protocol: 5 seeds, 1e7 steps, 20k steps/iteration")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="bench_results/learning")
    args = parser.parse_args()

    from rllib_kfcpo.cli.experiment import Experiment
    from rllib_kfcpo.cli.plot import collect, plot_learning_curves
    from rllib_kfcpo.cli.run import run_experiment

    seeds = [int(s) for s in args.seeds.split(",")]
    steps, batch, runners = args.steps, 10_000, 2
    if args.full:
        seeds, steps, batch, runners = [0, 5, 10, 15, 20], 10_000_000, 20_000, 8
    envs = args.envs.split(",")
    if args.smoke:
        envs, seeds, steps, batch, runners = ["rllib_kfcpo/ActionCost-v0"], [0], 400, 200, 1
    out = Path(args.out).resolve()
    table: dict[str, dict[str, dict]] = {}
    for env in envs:
        env_dir = out / env.replace("/", "_")
        for name, (algo, extra) in variants(args.ablations).items():
            config = {"cost_limit": 25.0, "train_batch_size": batch, "num_env_runners": runners,
                      **extra}
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
        limit = 5.0 if args.smoke else 25.0
        table[env] = {name: summarise(trials, limit) for name, trials in groups.items()}
        plot_learning_curves([env_dir], env_dir / "learning_curves.png")
    (out / "results.json").write_text(json.dumps(table, indent=2))
    print(f"\nsteps per run {steps:,}, seeds {seeds}, cost limit {limit:g}")
    print(f"{'env':>30} | {'algorithm':>22} | {'return':>17} | {'cost':>15} | within")
    for env, rows in table.items():
        base = rows.get("PPOLag", {}).get("return_mean", math.nan)
        for name, r in rows.items():
            rel = r["return_mean"] / base if base and math.isfinite(base) and base > 0 else math.nan
            print(f"{env:>30} | {name:>22} | {r['return_mean']:8.2f} +- {r['return_std']:5.2f} |"
                  f" {r['cost_mean']:6.2f} +- {r['cost_std']:5.2f} | {r['within_limit']:.2f}"
                  f"  (x{rel:.2f} PPOLag)")


if __name__ == "__main__":
    main()
