"""The ``rllib`` command: ``rllib train``, ``rllib evaluate``, ``rllib plot``.

Ray 2.60 ships no ``rllib`` command; this one accepts RLlib's classic tuned-example
YAML (``rllib train file <yaml>``) and command-line experiments::

    rllib train file tuned_examples/kfcpo/safety-point-goal1.yaml --stop '{"training_iteration": 3}'
    rllib train --algo KFCPO --env SafetyPointGoal1-v0 --config '{"cost_limit": 10}'
    rllib evaluate results/<exp>/<trial>/checkpoint_000000 --episodes 5
    rllib plot results/<exp> -o curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rllib_kfcpo.cli.experiment import Experiment, ExperimentError, load_experiments


def _json_arg(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{what} must be a JSON object, e.g. "
                              f"'{{\"training_iteration\": 10}}': {err}") from err
    if not isinstance(value, dict):
        raise ExperimentError(f"{what} must be a JSON object, got {type(value).__name__}.")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rllib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train from a tuned-example YAML or flags")
    train.add_argument("source", nargs="*", help="`file <yaml>` to read a tuned example")
    train.add_argument("--algo", "--run", dest="algo", help="KFCPO or PPOLag")
    train.add_argument("--env", help="env id, e.g. SafetyPointGoal1-v0")
    train.add_argument("--config", default="{}", help="JSON config overrides")
    train.add_argument("--stop", default=None, help="JSON stop criteria (override the file's)")
    train.add_argument("--checkpoint-freq", type=int, default=None)
    train.add_argument("--storage-path", default=None, help="results root (default ./results)")
    train.add_argument("--seeds", default=None, help="comma-separated seeds, one trial each")
    train.add_argument("--resume", action="store_true", help="resume an interrupted run")
    train.add_argument("--plot", action="store_true", help="write learning_curves.png after")

    evaluate = sub.add_parser("evaluate", help="roll out a checkpoint; report return and cost")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--episodes", type=int, default=5)
    evaluate.add_argument("--seed", type=int, default=0)

    plot = sub.add_parser("plot", help="learning curves PNG from result directories")
    plot.add_argument("dirs", nargs="+")
    plot.add_argument("-o", "--output", default="learning_curves.png")
    return parser


def _experiments(args: argparse.Namespace) -> list[Experiment]:
    overrides = _json_arg(args.config, "--config")
    if args.source:
        if args.source[0] != "file" or len(args.source) != 2:
            raise ExperimentError("usage: rllib train file <tuned_example.yaml> [flags]")
        experiments = load_experiments(args.source[1])
        for exp in experiments:
            exp.config.update(overrides)
            if args.env:
                exp.env = args.env
            if args.algo:
                exp.run = args.algo
    else:
        if not (args.algo and args.env):
            raise ExperimentError("give `file <yaml>` or both --algo and --env.")
        experiments = [Experiment(name=f"{args.algo}-{args.env}", run=args.algo,
                                  env=args.env, config=overrides)]
    for exp in experiments:
        if args.stop is not None:
            exp.stop = _json_arg(args.stop, "--stop")
        if args.seeds:
            exp.seeds = [int(s) for s in args.seeds.split(",")]
        exp.build_config()  # check everything before Ray starts
    return experiments


def cmd_train(args: argparse.Namespace) -> int:
    from rllib_kfcpo.cli.run import run_experiment

    experiments = _experiments(args)
    storage = args.storage_path or str(Path.cwd() / "results")
    for exp in experiments:
        run_experiment(exp, storage_path=storage, checkpoint_freq=args.checkpoint_freq,
                       resume=args.resume)
        if args.plot:
            from rllib_kfcpo.cli.plot import plot_learning_curves

            out = Path(storage) / exp.name / "learning_curves.png"
            plot_learning_curves([Path(storage) / exp.name], out)
            print(f"   learning curves: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rllib_kfcpo.evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rllib_kfcpo.cli.plot import plot_learning_curves

    plot_learning_curves(args.dirs, args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rllib`` console script."""
    args = _parser().parse_args(argv)
    import rllib_kfcpo  # noqa: F401  (registration)

    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "plot": cmd_plot}[args.command](
            args
        )
    except (ExperimentError, FileNotFoundError) as err:
        print(f"rllib: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
