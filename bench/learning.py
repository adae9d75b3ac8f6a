"""Learning comparison: KFCPO vs PPO-Lagrangian (and KFCPO ablations), same budget.

Trains every (algorithm, env, seed) with the same step budget through Ray Tune, then
writes a results table (final return and cost as mean +- std over seeds, fraction of
seeds within the limit; "final" = mean of the last 3 reported iterations) and learning
curves (PNG, one per env):

    .venv/bin/python bench/learning.py --reuse-compiled-model  # 3 seeds x 2 envs x 300k
    .venv/bin/python bench/learning.py --ablations --envs SafetyPointGoal1-v0
    .venv/bin/python bench/learning.py --algos PPOLag,PPOPIDLag,CPO,KFCPO  # every baseline
    .venv/bin/python bench/learning.py --full               # OmniSafe protocol, a cluster
    .venv/bin/python bench/learning.py --headline --reuse-compiled-model  # resumable, hours
    .venv/bin/python bench/learning.py --smoke              # seconds, for the test suite

Every variant gets the same envs, seeds, step budget, batch size and env runners; only
the algorithm (and, for ablations, one KFCPO setting) differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

#: The OmniSafe on-policy benchmark envs (docs/benchmarks.md), used by ``--full``.
FULL_ENVS = (
    "SafetyAntVelocity-v1", "SafetyHalfCheetahVelocity-v1", "SafetyHopperVelocity-v1",
    "SafetyWalker2dVelocity-v1", "SafetyPointGoal1-v0", "SafetyCarGoal1-v0",
)

#: ``--headline``: the binding-task comparison of docs/benchmarks.md (env -> env steps).
HEADLINE_ENVS = {
    "SafetyPointGoal1-v0": 1_000_000,
    "SafetyCarGoal1-v0": 1_000_000,
    "SafetyHalfCheetahVelocity-v1": 2_000_000,  # the speed limit binds from about 800k
}
HEADLINE_SEEDS = (0, 5, 10)
#: The algorithms the headline compares, in this order, when the package has them.
HEADLINE_ALGOS = ("KFCPO", "PPOLag", "PPOPIDLag", "CPO")
#: The algorithms of the plain comparison when no ``--algos`` is given.
DEFAULT_ALGOS = ("PPOLag", "KFCPO")
HEADLINE_FILE = Path(__file__).resolve().parent / "measured" / "headline.json"
#: Env runners' sampling timeout. RLlib's 60 s default is too short on an oversubscribed
#: machine (3 seeds in parallel on 2 cores): a timed-out round returns no samples and the
#: iteration trains nothing (seen as NaN rows in progress.csv).
SAMPLE_TIMEOUT_S = 600.0

ABLATIONS = {
    "KFCPO-no-projection": {"projection": "none"},
    "KFCPO-hard-switch": {"margin_schedule": "hard"},
    "KFCPO-no-rollback": {"kl_rollback": False},
    "KFCPO-rollback-no-retry": {"rollback_backtracks": 0},
    "KFCPO-plain-gradient": {"use_kfac": False},
}


def variants(ablations: bool, extra: list[str] = (),
             only: list[str] | None = None,
             algos: tuple[str, ...] = DEFAULT_ALGOS) -> dict[str, tuple[str, dict]]:
    """Variant name -> (algorithm, config overrides).

    ``algos`` run with their defaults, under their own names; ``extra`` entries are
    ``NAME=JSON`` KFCPO variants (``'KFCPO-t03={"margin_temperature": 0.3}'``) or
    ``ALGO:NAME=JSON`` variants of another algorithm (``'PPOLag:PPO-free={"cost_limit":
    1e9}'``); ``only`` keeps the named variants, run in that order (all when None).
    """
    unknown = sorted(set(algos) - set(HEADLINE_ALGOS))
    if unknown:
        raise SystemExit(f"--algos names unknown algorithms {unknown}; known: "
                         f"{list(HEADLINE_ALGOS)}")
    out = {algo: (algo, {}) for algo in algos}
    if ablations:
        out.update({name: ("KFCPO", cfg) for name, cfg in ABLATIONS.items()})
    for entry in extra:
        name, sep, overrides = entry.partition("=")
        algo, colon, bare = name.partition(":")
        algo, name = (algo, bare) if colon else ("KFCPO", name)
        if algo not in HEADLINE_ALGOS:
            raise SystemExit(f"--variant {entry!r} names an unknown algorithm {algo!r}; "
                             f"known: {list(HEADLINE_ALGOS)}.")
        try:
            parsed = json.loads(overrides) if sep else None
        except json.JSONDecodeError:
            parsed = None
        if not name or not isinstance(parsed, dict):
            raise SystemExit(f"--variant {entry!r} is invalid: use [ALGO:]NAME='{{\"key\": "
                             "value}' (a JSON object of the algorithm's settings; ALGO "
                             "defaults to KFCPO).")
        out[name] = (algo, parsed)
    if only is not None:
        unknown = sorted(set(only) - set(out))
        if unknown:
            raise SystemExit(f"--only names unknown variants {unknown}; known: {sorted(out)}")
        out = {name: out[name] for name in dict.fromkeys(only)}  # in the order given
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


def sampled_iterations(steps: np.ndarray | list[float]) -> np.ndarray:
    """Mask of the iterations that sampled env steps: lifetime steps finite, > 0 and above
    every earlier iteration's. While a trial's env runner is down (e.g. killed by Ray's
    memory monitor and restarting) Tune still logs iterations, which sample and train
    nothing; they are not part of the run (counting them would dilute its violation and
    widen its final 10 %). A run in which no iteration sampled keeps every iteration (it is
    reported as it is)."""
    mask, best = [], 0.0
    for value in np.asarray(steps, dtype=float):
        mask.append(bool(math.isfinite(value) and value > best))
        best = value if mask[-1] else best
    return np.asarray(mask, dtype=bool) if any(mask) else np.ones(len(mask), dtype=bool)


def violation_by_part(costs: np.ndarray | list[float], limit: float,
                      parts: int = 4) -> list[float]:
    """Means of ``max(0, cost - limit)`` over ``parts`` consecutive, near-equal shares of a
    run's iterations (NaN cost: no violation, as ``mean_violation``): when in training the
    violation happens."""
    excess = np.maximum(0.0, np.nan_to_num(np.asarray(costs, dtype=float)) - limit)
    return [float(np.mean(part)) if len(part) else math.nan
            for part in np.array_split(excess, parts)]


def run_record(trial: dict, *, env: str, algo: str, seed: int, limit: float,
               wall_s: float) -> dict:
    """One finished run's headline record from its ``progress.csv`` columns.

    ``final_return``/``final_cost``: means over the last 10 % of the run's iterations of the
    training-time episode return and cost; ``mean_violation``: the mean over all
    iterations of ``max(0, cost - limit)`` (safety during training, not only at the end).
    Iterations that sampled nothing (:func:`sampled_iterations`) are left out.
    """
    from rllib_kfcpo.cli.run import final_rows

    keep = sampled_iterations(trial["steps"])
    returns, costs = np.asarray(trial["return"])[keep], np.asarray(trial["cost"])[keep]
    steps = np.asarray(trial["steps"])[keep]
    tail = final_rows(len(returns))
    return {
        "env": env, "algo": algo, "seed": seed,
        "steps": int(np.nanmax(steps)) if np.isfinite(steps).any() else 0,
        "final_return": float(np.nanmean(returns[-tail:])),
        "final_cost": float(np.nanmean(costs[-tail:])),
        "mean_violation": float(np.nanmean(np.maximum(0.0, np.nan_to_num(costs) - limit))),
        "wall_s": float(wall_s),
    }


def window_means(trial: dict, start: int, end: int) -> dict[str, float]:
    """Means of the training-time episode return and cost over the iterations whose
    lifetime env steps lie in ``[start, end]`` (runs compared at matching steps, e.g. one
    cut early against a finished one); NaN with ``iterations`` 0 when none does."""
    steps = np.asarray(trial["steps"], dtype=float)
    inside = (steps >= start) & (steps <= end)
    if not inside.any():
        return {"return": math.nan, "cost": math.nan, "iterations": 0}
    return {"return": float(np.nanmean(np.asarray(trial["return"], dtype=float)[inside])),
            "cost": float(np.nanmean(np.asarray(trial["cost"], dtype=float)[inside])),
            "iterations": int(inside.sum())}


def parse_window(text: str) -> tuple[int, int]:
    """``"A:B"`` (env steps, A <= B) as ``(A, B)``; one clear error otherwise."""
    try:
        start, end = (int(float(part)) for part in text.split(":"))
    except ValueError:
        start = end = -1
    if not 0 <= start <= end:
        raise SystemExit(f"--window {text!r} is invalid: give env steps as A:B with "
                         "0 <= A <= B, e.g. --window 400000:600000.")
    return start, end


def load_records(path: Path) -> list[dict]:
    """The records of finished headline runs ([] when there are none yet)."""
    return json.loads(path.read_text()) if path.is_file() else []


def save_records(path: Path, records: list[dict]) -> None:
    """Writes the records atomically (a crash leaves the previous file intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sorted(records, key=lambda r: (r["env"], r["algo"], r["seed"])),
                              indent=1))
    os.replace(tmp, path)


def _targets(name: str, kf: dict, baselines: dict[str, dict], limit: float) -> list[str]:
    """The issue's three targets for one KFCPO row against the baseline rows."""
    lines = []
    feasible = {a: r for a, r in baselines.items() if r["cost"] <= limit}
    if feasible:
        best = max(feasible, key=lambda a: feasible[a]["return"])
        ratio = (kf["return"] / feasible[best]["return"] if feasible[best]["return"] > 0
                 else math.nan)
        verdict = "met" if ratio >= 1.10 and kf["cost"] <= limit else "NOT met"
        lines.append(f"  {name}: return >= 1.10 x best feasible baseline ({best}): "
                     f"x{ratio:.2f} {verdict}")
    else:
        lines.append(f"  {name}: no baseline within the limit, so {name} must be: "
                     f"{'met' if kf['cost'] <= limit else 'NOT met'}")
    lines.append(f"  {name}: mean cost <= {limit:g} and every seed <= {1.5 * limit:g}: "
                 + ("met" if kf["cost"] <= limit and kf["cost_max"] <= 1.5 * limit
                    else "NOT met"))
    if "PPOLag" in baselines:
        ppo = baselines["PPOLag"]["violation"]
        lines.append(f"  {name}: mean violation <= 0.5 x PPOLag's ({ppo:.2f}): "
                     f"{kf['violation']:.2f} "
                     + ("met" if kf["violation"] <= 0.5 * ppo else "NOT met"))
    return lines


def headline_table(records: list[dict], limit: float) -> list[str]:
    """Per env: each algorithm's mean +- std over seeds, and the issue's three targets for
    KFCPO and every recorded KFCPO variant (an ``algo`` starting with ``KFCPO``); the
    baselines are the other algorithms."""
    lines = []
    for env in dict.fromkeys(r["env"] for r in records):
        rows: dict[str, dict] = {}
        for algo in dict.fromkeys(r["algo"] for r in records if r["env"] == env):
            runs = [r for r in records if r["env"] == env and r["algo"] == algo]
            rows[algo] = {
                "return": np.mean([r["final_return"] for r in runs]),
                "return_std": np.std([r["final_return"] for r in runs]),
                "cost": np.mean([r["final_cost"] for r in runs]),
                "cost_max": max(r["final_cost"] for r in runs),
                "violation": np.mean([r["mean_violation"] for r in runs]),
                "seeds": sorted(r["seed"] for r in runs),
            }
        lines.append(f"{env}")
        for algo, row in rows.items():
            lines.append(f"  {algo:>16} | return {row['return']:8.2f} +- {row['return_std']:6.2f}"
                         f" | cost {row['cost']:7.2f} (max seed {row['cost_max']:6.2f}) | "
                         f"mean violation {row['violation']:6.2f} | seeds {row['seeds']}")
        baselines = {a: r for a, r in rows.items() if not a.startswith("KFCPO")}
        for name, kf in rows.items():  # KFCPO and its recorded variants (KFCPO-<setting>)
            if name.startswith("KFCPO"):
                lines.extend(_targets(name, kf, baselines, limit))
    return lines


def run_headline(args: argparse.Namespace, base_config: dict, records_path: Path,
                 out: Path) -> None:
    """Trains every missing (env, algorithm, seed) of the headline; skips finished ones.

    Each (env, algorithm) group trains its missing seeds in parallel; an interrupted group
    is resumed from its Tune checkpoints (every 10 iterations) when the command runs
    again. Finished runs are appended to ``records_path`` as soon as their group ends.
    """
    from rllib_kfcpo.cli.experiment import Experiment, algorithms
    from rllib_kfcpo.cli.plot import collect, plot_learning_curves
    from rllib_kfcpo.cli.run import run_experiment

    known = algorithms()
    algos = [a for a in (args.algos.split(",") if args.algos else HEADLINE_ALGOS)
             if a in known]
    envs = {"rllib_kfcpo/ActionCost-v0": 600} if args.smoke else dict(HEADLINE_ENVS)
    if args.envs and not args.smoke:
        unknown = sorted(set(args.envs.split(",")) - set(HEADLINE_ENVS))
        if unknown:
            raise SystemExit(f"--envs {unknown} are not headline envs: {list(HEADLINE_ENVS)}.")
        envs = {env: steps for env, steps in envs.items() if env in args.envs.split(",")}
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    limit = base_config["cost_limit"]
    for env, steps in envs.items():
        env_dir = out / env.replace("/", "_")
        for algo in algos:
            done = {r["seed"] for r in load_records(records_path)
                    if r["env"] == env and r["algo"] == algo and r["steps"] >= steps}
            missing = [s for s in seeds if s not in done]
            if not missing:
                print(f"== {env} {algo}: seeds {seeds} done, skipped", flush=True)
                continue
            name = f"{algo}-seeds{'_'.join(map(str, missing))}"
            config = {**base_config, **ALGO_SETTINGS.get(algo, {})}
            if args.smoke:
                config.update(minibatch_size=100, num_epochs=1)
            exp = Experiment(name=name, run=algo, env=env, config=config, seeds=missing,
                             stop={"num_env_steps_sampled_lifetime": steps},
                             checkpoint_freq=10)
            resume = (env_dir / name / "tuner.pkl").is_file()
            started = time.time()
            run_experiment(exp, storage_path=str(env_dir), resume=resume)
            wall = time.time() - started
            trials = collect([env_dir / name])[name]
            records = load_records(records_path)
            for trial in trials:
                seed = int(json.loads((Path(trial["dir"]) / "params.json").read_text())["seed"])
                record = run_record(trial, env=env, algo=algo, seed=seed, limit=limit,
                                    wall_s=wall)
                if record["steps"] < steps:  # interrupted: resumed when run again
                    print(f"== {env} {algo} seed {seed}: unfinished at {record['steps']:,} "
                          f"of {steps:,} steps, not recorded", flush=True)
                    continue
                records = [r for r in records
                           if (r["env"], r["algo"], r["seed"]) != (env, algo, seed)]
                records.append(record)
            save_records(records_path, records)
        if any(env_dir.rglob("progress.csv")):
            png = records_path.parent / f"headline_{env.replace('/', '_')}.png"
            plot_learning_curves([env_dir], png)
    print("\n".join(headline_table(load_records(records_path), limit)))


#: Per-algorithm update layout of every comparison here (the same batch, network and env
#: runners for all): KFCPO takes a natural-gradient step per 2,000-step minibatch, the
#: first-order methods SGD on 1,024-step minibatches, CPO one step per batch (its
#: minibatches are the critics': OmniSafe's 10 epochs of 128).
ALGO_SETTINGS = {
    "KFCPO": {"minibatch_size": 2000, "num_epochs": 10},
    "PPOLag": {"minibatch_size": 1024, "num_epochs": 10},
    "PPOPIDLag": {"minibatch_size": 1024, "num_epochs": 10},
    "CPO": {"minibatch_size": 128, "num_epochs": 10},
}


#: Learner metrics (``learners/default_policy/<name>`` in progress.csv) that --summarise
#: reports as the mean over a run's last 10 % of iterations, where the run logged them:
#: the margin weight, the policy's entropy and log-std, the steps kept, the real KL of a
#: kept step (and, with held-out rows, on its own rows, and the steps the held-out
#: improvement check undid; with surrogate_clip, the share of rows whose reward gradient was
#: clipped away), the agreement of consecutive minibatches' directions (KFCPO's
#: rllib_kfcpo.algorithms.kfcpo.metrics; the baselines log the entropy), and how much of
#: the returns' and cost returns' variance the two critics explain (every safe algorithm).
DIAGNOSTICS = ("weight_cost", "margin_multiplier", "entropy", "log_std_mean", "policy_steps",
               "kl_of_step", "kl_of_step_own_rows", "held_out_rejections",
               "reward_clipped_share",
               "reward_gradient_agreement", "cost_gradient_agreement",
               "reward_natural_agreement", "cost_natural_agreement",
               "vf_explained_var", "cost_vf_explained_var")
#: Over every iteration of a run (not its last 10 %): the 'pid' margin multiplier's peak and
#: the share of iterations whose cost weight is saturated (w_c > 0.95: nearly pure cost
#: descent), the two numbers that tell a wound-up or bang-bang margin schedule.
WHOLE_RUN = ("margin_multiplier_peak", "weight_cost_share_above_0.95")


def run_diagnostics(rows: list[dict]) -> dict[str, float]:
    """:data:`DIAGNOSTICS` of one run (its :func:`~rllib_kfcpo.cli.plot.read_rows`), means
    over its last 10 % of iterations, and its :data:`WHOLE_RUN` numbers over every
    iteration."""
    from rllib_kfcpo.cli.run import final_rows

    tail = rows[-final_rows(len(rows)):] if rows else []
    def values(name: str, among: list[dict]) -> list[float]:
        key = f"learners/default_policy/{name}"
        return [float(r[key]) for r in among if r.get(key) not in ("", None)]

    out = {name: float(np.nanmean(v)) for name in DIAGNOSTICS if (v := values(name, tail))}
    if multipliers := values("margin_multiplier", rows):
        out["margin_multiplier_peak"] = float(np.nanmax(multipliers))
    if weights := values("weight_cost", rows):
        out["weight_cost_share_above_0.95"] = float(np.mean(np.asarray(weights) > 0.95))
    return out


def summarise_runs(root: Path, limit: float = 25.0,
                   window: tuple[int, int] | None = None) -> dict[str, dict]:
    """Headline-style records (:func:`run_record`) of every run below ``root``, by variant,
    each with its learner :data:`DIAGNOSTICS` (``diagnostics``) and, with ``window``, its
    :func:`window_means` over those env steps (``window``).

    For sweeps stopped before their budget too: ``steps`` says how far each run got.
    """
    from rllib_kfcpo.cli.plot import collect, read_rows

    out = {}
    for name, trials in sorted(collect([root]).items()):
        runs = []
        for trial in trials:
            params = json.loads((Path(trial["dir"]) / "params.json").read_text())
            rows = read_rows(Path(trial["dir"]))
            # Tune's time_total_s of the last iteration (a resumed run's, if resumed).
            wall = float(rows[-1].get("time_total_s") or math.nan) if rows else math.nan
            keep = sampled_iterations(trial["steps"])  # iterations that sampled nothing out
            rows = [row for row, kept in zip(rows, keep, strict=True) if kept]
            runs.append({**run_record(trial, env=str(params.get("env", "")), algo=name,
                                      seed=params.get("seed"), limit=limit, wall_s=wall),
                         "violation_by_quarter": violation_by_part(
                             np.asarray(trial["cost"])[keep], limit),
                         "diagnostics": run_diagnostics(rows)})
            if window is not None:
                runs[-1]["window"] = window_means(trial, *window)
        returns = [r["final_return"] for r in runs]
        costs = [r["final_cost"] for r in runs]
        out[name] = {"runs": runs, "return_mean": float(np.mean(returns)),
                     "return_std": float(np.std(returns)), "cost_mean": float(np.mean(costs)),
                     "cost_max": float(np.max(costs)),
                     "violation_mean": float(np.mean([r["mean_violation"] for r in runs])),
                     "violation_by_quarter": [float(np.mean(q)) for q in zip(
                         *(r["violation_by_quarter"] for r in runs), strict=True)]}
        print(f"{name:>32} | steps {min(r['steps'] for r in runs):>9,} | return "
              f"{out[name]['return_mean']:6.2f} +- {out[name]['return_std']:5.2f} | cost "
              f"{out[name]['cost_mean']:6.1f} (max {out[name]['cost_max']:6.1f}) | violation "
              f"{out[name]['violation_mean']:6.1f} | seeds {[r['seed'] for r in runs]}")
        print(" " * 33 + "| violation by quarter of the run (mean over seeds): " + " / ".join(
            f"{v:.1f}" for v in out[name]["violation_by_quarter"]))
        if window is not None:
            means = [r["window"] for r in runs]
            out[name]["window"] = {
                "steps": list(window),
                "return_mean": float(np.mean([m["return"] for m in means])),
                "cost_mean": float(np.mean([m["cost"] for m in means]))}
            print(" " * 33 + f"| env steps {window[0]:,}-{window[1]:,}: return "
                  f"{out[name]['window']['return_mean']:6.2f}, cost "
                  f"{out[name]['window']['cost_mean']:6.1f}; per seed (return / cost / "
                  "iterations) " + ", ".join(f"{m['return']:.2f} / {m['cost']:.1f} / "
                                             f"{m['iterations']}" for m in means))
        for label, names in (("final 10 %", DIAGNOSTICS), ("whole run", WHOLE_RUN)):
            shown = [k for k in names if all(k in r["diagnostics"] for r in runs)]
            if shown:
                print(" " * 33 + f"| {label}, per seed: " + "; ".join(
                    f"{k} " + "/".join(f"{r['diagnostics'][k]:.3g}" for r in runs)
                    for k in shown))
    return out


def main() -> None:
    """Parses the arguments, trains every variant, prints and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--envs", default=None,
                        help="comma-separated env ids (default: PointGoal1 and "
                             "HalfCheetahVelocity; with --headline: a subset of its envs)")
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
                        help="extra variant [ALGO:]NAME='{\"setting\": value}' (ALGO: KFCPO "
                             "unless given; repeatable)")
    parser.add_argument("--only", default=None,
                        help="comma-separated variant names to run (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="OmniSafe protocol: 5 seeds, 1e7 steps, 20k steps/iteration")
    parser.add_argument("--headline", action="store_true",
                        help="resumable binding-task comparison: PointGoal1 and CarGoal1 at 1M,"
                             " HalfCheetahVelocity at 2M steps, seeds 0,5,10, every algorithm;"
                             " records in bench/measured/headline.json")
    parser.add_argument("--algos", default=None,
                        help="comma-separated algorithms to compare, of "
                             f"{list(HEADLINE_ALGOS)} (default: PPOLag,KFCPO; --headline: all)")
    parser.add_argument("--records", default=str(HEADLINE_FILE),
                        help="--headline: the JSON file of finished runs")
    parser.add_argument("--summarise", default=None, metavar="DIR",
                        help="print (and with --records write) the final return/cost of "
                             "every run below DIR (an --out of an earlier run), then exit")
    parser.add_argument("--window", default=None, metavar="A:B",
                        help="with --summarise: also the mean return and cost over the "
                             "iterations between env steps A and B (runs at matching steps)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="bench_results/learning")
    args = parser.parse_args()

    if args.window is not None and not args.summarise:
        raise SystemExit("--window only applies to --summarise DIR: add --summarise.")
    if args.summarise:
        window = parse_window(args.window) if args.window is not None else None
        table = summarise_runs(Path(args.summarise) / "SafetyPointGoal1-v0"
                               if (Path(args.summarise) / "SafetyPointGoal1-v0").is_dir()
                               else Path(args.summarise), window=window)
        if args.records != str(HEADLINE_FILE):
            Path(args.records).write_text(json.dumps(table, indent=1))
        return
    import ray

    import rllib_kfcpo  # noqa: F401  (registers envs and algorithms)
    from rllib_kfcpo.cli.experiment import Experiment
    from rllib_kfcpo.cli.plot import collect, plot_learning_curves
    from rllib_kfcpo.cli.run import run_experiment

    seeds = [int(s) for s in args.seeds.split(",")]
    steps, batch, runners = args.steps, args.batch, args.runners
    envs = (args.envs or "SafetyPointGoal1-v0,SafetyHalfCheetahVelocity-v1").split(",")
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
    if args.headline:
        base = {"cost_limit": 25.0, "train_batch_size": batch, "num_env_runners": runners,
                "num_envs_per_env_runner": args.envs_per_runner,
                "sample_timeout_s": SAMPLE_TIMEOUT_S}
        if args.reuse_compiled_model:
            base["env_config"] = {"reuse_compiled_model": True}
        if args.smoke:
            base.update(train_batch_size=200, num_env_runners=1, cost_limit=5.0)
        run_headline(args, base, Path(args.records).resolve(), out)
        return
    table: dict[str, dict[str, dict]] = {}
    for env in envs:
        env_dir = out / env.replace("/", "_")
        only = args.only.split(",") if args.only else None
        chosen = tuple(args.algos.split(",")) if args.algos else DEFAULT_ALGOS
        for name, (algo, extra) in variants(args.ablations, args.variant, only,
                                            chosen).items():
            config = {"cost_limit": 25.0, "train_batch_size": batch, "num_env_runners": runners,
                      "sample_timeout_s": SAMPLE_TIMEOUT_S,
                      "num_envs_per_env_runner": args.envs_per_runner, **extra}
            if args.reuse_compiled_model:
                config["env_config"] = {"reuse_compiled_model": True}
            layout = ALGO_SETTINGS.get(algo, {})
            config.update({k: min(v, batch) if k == "minibatch_size" else v
                           for k, v in layout.items() if k not in extra})
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
