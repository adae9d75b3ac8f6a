"""Search KFCPO's hyperparameters with Ray Tune, keeping the cost limit (Python API).

The same search as ``rllib tune``, written out: the return is the objective, but a
trial whose final ``episode_cost_mean`` exceeds the cost limit is ranked after every
trial that keeps it (see ``rllib_kfcpo/cli/search.py`` for the derived metric Tune
maximises, ``constrained_objective``). Checkpoints are kept per trial; an interrupted
search (Ctrl+C) continues with ``--resume``.

    # a real search on SafetyPointGoal1-v0 (OmniSafe protocol from the tuned example)
    .venv/bin/python examples/tune_kfcpo.py --num-samples 8 --iterations 100
    # interrupted? the same command with --resume runs only what is left
    .venv/bin/python examples/tune_kfcpo.py --num-samples 8 --iterations 100 --resume
    # seconds, on the toy env: check the machinery
    .venv/bin/python examples/tune_kfcpo.py --env rllib_kfcpo/ActionCost-v0 --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNED_EXAMPLE = ROOT / "tuned_examples" / "kfcpo" / "safety-point-goal1.yaml"

#: The searched KFCPO settings (JSON form of ``rllib tune --search``).
SEARCH_SPACE = {
    "margin_temperature": {"loguniform": [0.03, 0.3]},
    "kfac_damping": {"loguniform": [1e-3, 1e-1]},
    "trust_region_kl": {"loguniform": [5e-4, 5e-3]},
}


def main(argv: list[str] | None = None) -> int:
    """Runs (or resumes) the search and prints the constrained ranking."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None,
                        help="env id (default: the tuned example's, SafetyPointGoal1-v0)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--cost-limit", type=float, default=25.0)
    parser.add_argument("--storage-path", default=str(ROOT / "results"))
    parser.add_argument("--name", default="tune-kfcpo")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budgets (1 iteration of 200 env steps per trial)")
    args = parser.parse_args(argv)

    import rllib_kfcpo  # noqa: F401  (registers KFCPO and the envs with Tune)
    from rllib_kfcpo.cli.experiment import (
        SMOKE_STOP,
        ExperimentError,
        apply_smoke,
        load_experiments,
    )
    from rllib_kfcpo.cli.search import OBJECTIVE_KEY, leaderboard, rank_trials, run_search

    (exp,) = load_experiments(TUNED_EXAMPLE)
    exp.config["cost_limit"] = args.cost_limit
    exp.stop = {"training_iteration": args.iterations}
    if args.env:
        exp.env = args.env
    if args.smoke:
        apply_smoke(exp)
        exp.stop = dict(SMOKE_STOP)
    try:
        grid = run_search(exp, search=SEARCH_SPACE, num_samples=args.num_samples,
                          storage_path=args.storage_path, name=args.name,
                          resume=args.resume)
    except ExperimentError as err:
        print(f"tune_kfcpo: error: {err}", file=sys.stderr)
        return 2
    ranked = rank_trials(grid, list(SEARCH_SPACE))
    print(leaderboard(ranked))
    best = grid.get_best_result(OBJECTIVE_KEY, "max")  # Tune's view agrees with the table
    print("best params:", {k: best.config.get(k) for k in SEARCH_SPACE})
    print(f"best checkpoint: {ranked[0].checkpoint if ranked else None}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
