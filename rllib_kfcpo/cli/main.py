"""The ``rllib`` command: ``rllib train``, ``rllib tune``, ``rllib evaluate``, ``rllib plot``.

Ray 2.60 ships no ``rllib`` command; this one accepts RLlib's classic tuned-example
YAML (``rllib train file <yaml>``) and command-line experiments::

    rllib train file tuned_examples/kfcpo/safety-point-goal1.yaml --stop '{"training_iteration": 3}'
    rllib train file tuned_examples/kfcpo/safety-point-goal1.yaml --smoke   # seconds
    rllib train --algo KFCPO --env SafetyPointGoal1-v0 --config '{"cost_limit": 10}'
    rllib train --help-config KFCPO
    rllib tune file tuned_examples/kfcpo/safety-point-goal1.yaml --num-samples 8 --name s1
    rllib tune file tuned_examples/kfcpo/safety-point-goal1.yaml --name s1 --resume
    rllib evaluate results/<exp>/<trial>/checkpoint_000000 --episodes 5
    rllib evaluate results/<exp>/<trial>/checkpoint_000000 --episodes 2 --video agent.mp4
    rllib plot results/<exp> -o curves.png

See docs/usage.md for every workflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rllib_kfcpo.cli.experiment import (
    SMOKE_STOP,
    Experiment,
    ExperimentError,
    algorithms,
    apply_smoke,
    load_experiments,
)
from rllib_kfcpo.rllib_seam import MODEL_CONFIG_ATTRIBUTE
from rllib_kfcpo.video import VideoError


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
    _add_experiment_args(train)
    train.add_argument("--checkpoint-freq", type=int, default=None)
    train.add_argument("--seeds", default=None, help="comma-separated seeds, one trial each")
    train.add_argument("--resume", action="store_true", help="resume an interrupted run")
    train.add_argument("--plot", action="store_true", help="write learning_curves.png after")
    train.add_argument("--help-config", metavar="ALGO", default=None,
                       help="list every config key of ALGO with its default, then exit")

    search = sub.add_parser(
        "tune", help="hyperparameter search: best return among trials within the cost limit"
    )
    _add_experiment_args(search)
    search.add_argument("--search", default=None,
                        help="JSON search space: a list is a grid, {\"loguniform\": [lo, hi]}, "
                        "{\"uniform\": [lo, hi]}, {\"randint\": [lo, hi]}, {\"choice\": "
                        "[...]}; default: margin_temperature, kfac_damping, trust_region_kl")
    search.add_argument("--num-samples", type=int, default=4,
                        help="samples of the space (grids are repeated this often)")
    search.add_argument("--name", default=None,
                        help="experiment name (default <experiment>-search); resume by name")
    search.add_argument("--checkpoint-freq", type=int, default=5)
    search.add_argument("--max-concurrent", type=int, default=None,
                        help="trials running at once (default: as many as the CPUs fit)")
    search.add_argument("--resume", action="store_true",
                        help="continue the interrupted search <storage-path>/<name>")
    search.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                        help="fifo: every trial runs its whole budget; asha: stop the worst "
                        "trials early (Tune's ASHA on the constrained objective: trials over "
                        "their cost limit first); needs a training_iteration or "
                        "num_env_steps_sampled_lifetime stop")
    search.add_argument("--grace-period", type=int, default=None,
                        help="asha: no trial is stopped before this many iterations (env "
                        "steps with an env-step stop); default 10%% of the budget")
    search.add_argument("--reduction-factor", type=float, default=4.0,
                        help="asha: at each rung the best 1/FACTOR of the trials go on "
                        "(default 4, Tune's)")

    evaluate = sub.add_parser("evaluate", help="roll out a checkpoint; report return and cost")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--episodes", type=int, default=5)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--video", metavar="OUT.mp4", default=None,
                          help="also render the episodes headless (MuJoCo EGL or OSMesa; "
                          "MUJOCO_GL is honoured) into ONE MP4, episode after episode, with "
                          "the episode, step, return and cost so far drawn in each frame; "
                          "Safety-Gymnasium tasks; needs pip install 'rllib-kfcpo[video]'")
    evaluate.add_argument("--video-size", metavar="WxH", default="256x256",
                          help="frame size of --video (default 256x256)")
    evaluate.add_argument("--camera", default=None,
                          help="camera of --video: track (default for navigation tasks), "
                          "fixednear, fixedfar, vision; velocity tasks: their own default")
    _add_verbose(evaluate)

    plot = sub.add_parser("plot", help="learning curves PNG from result directories")
    plot.add_argument("dirs", nargs="+")
    plot.add_argument("-o", "--output", default="learning_curves.png")
    return parser


def _add_experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="*", help="`file <yaml>` to read a tuned example")
    parser.add_argument("--algo", "--run", dest="algo", help="KFCPO, PPOLag, PPOPIDLag or CPO")
    parser.add_argument("--env", help="env id, e.g. SafetyPointGoal1-v0")
    parser.add_argument("--config", default="{}", help="JSON config overrides")
    parser.add_argument("--stop", default=None, help="JSON stop criteria (override the file's)")
    parser.add_argument("--storage-path", default=None, help="results root (default ./results)")
    _add_verbose(parser)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budgets (200 env steps, 1 epoch, no remote env runners, "
                        "50-step Safety-Gymnasium and PointGoalHazard episodes, 1 iteration "
                        "unless --stop) to check the experiment runs; --config and --stop "
                        "still win")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show every log line of Ray, RLlib and Tune (by default their "
                        "known-harmless notices are filtered; warnings and errors show)")


def _experiments(args: argparse.Namespace) -> list[Experiment]:
    overrides = _json_arg(args.config, "--config")
    if args.source:
        if args.source[0] != "file" or len(args.source) != 2:
            raise ExperimentError(f"usage: rllib {args.command} file <tuned_example.yaml> "
                                  "[flags], or --algo ALGO --env ENV [flags]")
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
                                  env=args.env, config=dict(overrides))]
    for exp in experiments:
        if args.smoke:
            apply_smoke(exp, overrides)
        if args.stop is not None:
            exp.stop = _json_arg(args.stop, "--stop")
        elif args.smoke:
            exp.stop = dict(SMOKE_STOP)
        if getattr(args, "seeds", None):
            try:
                exp.seeds = [int(s) for s in args.seeds.split(",")]
            except ValueError as err:
                raise ExperimentError(f"--seeds {args.seeds!r}: give comma-separated "
                                      "integers, e.g. --seeds 0,5,10.") from err
        exp.build_config()  # check everything before Ray starts
    return experiments


def help_config(algo: str) -> str:
    """Every config key of ``algo`` with its default (``rllib train --help-config``)."""
    known = algorithms()
    if algo not in known:
        raise ExperimentError(f"unknown algorithm {algo!r} for --help-config. "
                              f"Available: {sorted(known)}.")
    config = known[algo]()
    lines = [f"{algo} config keys (set under `config:` in a YAML or with --config):"]
    for key in sorted(vars(config)):
        if key.startswith("_") and key != MODEL_CONFIG_ATTRIBUTE:
            continue
        value = getattr(config, key)
        if callable(value) and not isinstance(value, type):
            continue
        lines.append(f"  {key}: {value!r}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from rllib_kfcpo.cli.run import run_experiment

    if args.help_config:
        print(help_config(args.help_config))
        return 0
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


def cmd_tune(args: argparse.Namespace) -> int:
    from rllib_kfcpo.cli.search import (
        default_search_space,
        leaderboard,
        rank_trials,
        run_search,
    )

    experiments = _experiments(args)
    if len(experiments) != 1:
        raise ExperimentError(f"rllib tune searches one experiment; the file has "
                              f"{len(experiments)}. Keep one experiment in the YAML.")
    exp = experiments[0]
    search = _json_arg(args.search, "--search") if args.search is not None else None
    grid = run_search(exp, search=search, num_samples=args.num_samples,
                      storage_path=args.storage_path, name=args.name,
                      checkpoint_freq=args.checkpoint_freq,
                      max_concurrent_trials=args.max_concurrent, resume=args.resume,
                      scheduler=args.scheduler, grace_period=args.grace_period,
                      reduction_factor=args.reduction_factor)
    searched = list(search if search is not None else default_search_space(exp.run))
    ranked = rank_trials(grid, searched)
    print("== ranking (feasible trials first, by return; infeasible last, by violation):")
    print(leaderboard(ranked))
    if ranked:
        print(f"   best checkpoint: {ranked[0].checkpoint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rllib_kfcpo.evaluation import evaluate_checkpoint

    if args.video is None:
        report = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, seed=args.seed)
        print(json.dumps(report, indent=2))
        return 0
    from rllib_kfcpo.video import parse_size, record_video

    if not Path(args.checkpoint).is_dir():  # before probing GL backends
        raise FileNotFoundError(f"No checkpoint directory at {args.checkpoint!r}.")
    report = record_video(args.checkpoint, args.video, episodes=args.episodes, seed=args.seed,
                          size=parse_size(args.video_size), camera=args.camera)
    print(json.dumps(report, indent=2))
    per_episode = "; ".join(f"episode {i}: return {r:.2f}, cost {c:.2f}" for i, (r, c) in
                            enumerate(zip(report["episode_returns"], report["episode_costs"],
                                          strict=True), start=1))
    print(f"video: {report['video']} ({report['video_frames']} frames at {report['fps']:g} "
          f"fps, MUJOCO_GL={report['gl_backend']}; {per_episode})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rllib_kfcpo.cli.plot import plot_learning_curves

    plot_learning_curves(args.dirs, args.output)
    print(f"wrote {args.output} (plotted data: {Path(args.output).with_suffix('.json')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rllib`` console script."""
    args = _parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        from rllib_kfcpo.cli import quiet

        quiet.enable()
    import rllib_kfcpo  # noqa: F401  (registration)

    try:
        commands = {"train": cmd_train, "tune": cmd_tune, "evaluate": cmd_evaluate,
                    "plot": cmd_plot}
        return commands[args.command](args)
    except (ExperimentError, FileNotFoundError, VideoError) as err:
        print(f"rllib: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
