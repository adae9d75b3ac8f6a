"""Ray Tune hyperparameter search with the cost limit respected (``rllib tune``).

The objective is the episode return, but only among trials that keep the cost limit.
Tune ranks trials by one scalar, so every training result gets a derived metric,
:data:`OBJECTIVE_KEY` (``constrained_objective``), computed by
:class:`ConstrainedObjectiveCallback` in ``on_train_result``:

- feasible (``episode_cost_mean <= cost_limit``): the episode return;
- infeasible: ``INFEASIBLE_OFFSET - (episode_cost_mean - cost_limit)``, i.e. far below
  any return, and the larger the violation, the lower;
- not yet measured (no episode finished, cost NaN): ``UNMEASURED``, below everything.

So ``ResultGrid.get_best_result(OBJECTIVE_KEY, "max")``, Tune schedulers and the
checkpoint ranking all put every feasible trial before every infeasible one: an
infeasible trial with a high return is never silently the best. :func:`rank_trials`
ranks the finished trials by the same rule on their last result (the final policy), in
lexicographic form (feasible first by return, then infeasible by violation), and
:func:`leaderboard` prints that table.

Checkpoints are written every ``checkpoint_freq`` iterations (and at the end) and kept by
the objective; an interrupted search (Ctrl+C, a lost machine, a stopped job) continues
with the same command plus ``--resume`` (``rllib tune file X.yaml --name NAME --resume``,
``tune.Tuner.restore`` of ``<storage>/<NAME>``): finished trials
are kept, running ones continue from their last checkpoint, pending ones start.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.rllib.utils import force_list

from rllib_kfcpo.cli.experiment import Experiment, ExperimentError
from rllib_kfcpo.cli.run import (
    COST_KEY,
    RETURN_KEY,
    STEPS_KEY,
    ProgressPrinter,
    _get,
    prepare_tune_run,
)
from rllib_kfcpo.safe.callbacks import SafeMetricsCallback

OBJECTIVE_KEY = "constrained_objective"
FEASIBLE_KEY = "cost_feasible"
#: Objective of an infeasible result is this minus the violation: below any real return.
INFEASIBLE_OFFSET = -1e9
#: Objective of a result with no finished episode yet (unknown cost): below everything.
UNMEASURED = -2e9

#: Searched when no ``--search`` is given: KFCPO's three most sensitive settings.
DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "margin_temperature": {"loguniform": [0.03, 0.3]},
    "kfac_damping": {"loguniform": [1e-3, 1e-1]},
    "trust_region_kl": {"loguniform": [5e-4, 5e-3]},
}
#: Algorithm -> what is searched when no ``--search`` is given (each one's own settings).
DEFAULT_SEARCH_SPACES: dict[str, dict[str, Any]] = {
    "KFCPO": DEFAULT_SEARCH_SPACE,
    "PPOLag": {"lagrangian_multiplier_lr": {"loguniform": [0.01, 0.1]},
               "lr": {"loguniform": [1e-4, 1e-3]}},
    "PPOPIDLag": {"pid_kp": {"loguniform": [0.03, 1.0]},
                  "pid_ki": {"loguniform": [0.003, 0.1]},
                  "pid_kd": {"loguniform": [0.003, 0.1]}},
    "CPO": {"target_kl": {"loguniform": [0.003, 0.03]},
            "cg_damping": {"loguniform": [0.01, 0.3]}},
}


def default_search_space(algo: str) -> dict[str, Any]:
    """The search space used for ``algo`` when no ``--search`` is given."""
    return dict(DEFAULT_SEARCH_SPACES.get(algo, DEFAULT_SEARCH_SPACE))
_DISTRIBUTIONS = {
    "uniform": tune.uniform,
    "loguniform": tune.loguniform,
    "randint": tune.randint,
}


def constrained_objective(episode_return: float, episode_cost: float,
                          cost_limit: float) -> float:
    """The scalar Tune maximises: return if the cost limit is kept, else far below."""
    if not (math.isfinite(episode_cost) and math.isfinite(episode_return)):
        return UNMEASURED
    if episode_cost <= cost_limit:
        return float(episode_return)
    return INFEASIBLE_OFFSET - float(episode_cost - cost_limit)


class ConstrainedObjectiveCallback(SafeMetricsCallback):
    """SafeMetricsCallback that also adds the constrained objective to each result."""

    def on_train_result(self, *, algorithm: Any, metrics_logger: Any = None,  # noqa: D102
                        result: dict[str, Any], **kwargs: Any) -> None:
        limit = float(algorithm.config.cost_limit)
        ret = float(_get(result, RETURN_KEY))
        cost = float(_get(result, COST_KEY))
        result[OBJECTIVE_KEY] = constrained_objective(ret, cost, limit)
        result[FEASIBLE_KEY] = bool(math.isfinite(cost) and cost <= limit)


def parse_search_space(spec: dict[str, Any]) -> dict[str, Any]:
    """JSON search space -> Tune search space.

    ``[a, b, c]`` is a grid (every value, times ``num_samples``); ``{"uniform": [lo, hi]}``,
    ``{"loguniform": [lo, hi]}``, ``{"randint": [lo, hi]}`` and ``{"choice": [...]}`` are
    sampled once per sample; a plain value is fixed.
    """
    space: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, list):
            if not value:
                raise ExperimentError(f"search space {key!r}: empty list; give at least "
                                      "one value, e.g. [0.05, 0.1].")
            space[key] = tune.grid_search(value)
        elif isinstance(value, dict):
            if len(value) != 1:
                raise ExperimentError(
                    f"search space {key!r}: {value!r} must have exactly one of "
                    f"{sorted([*_DISTRIBUTIONS, 'choice'])}, e.g. {{\"loguniform\": [1e-3, 1e-1]}}."
                )
            (kind, args), = value.items()
            if kind == "choice":
                if not isinstance(args, list) or not args:
                    raise ExperimentError(f"search space {key!r}: choice needs a non-empty "
                                          "list, e.g. {\"choice\": [0.05, 0.1]}.")
                space[key] = tune.choice(args)
            elif kind in _DISTRIBUTIONS:
                if not (isinstance(args, list) and len(args) == 2
                        and all(isinstance(a, (int, float)) for a in args)
                        and args[0] < args[1] and (kind != "loguniform" or args[0] > 0)):
                    raise ExperimentError(
                        f"search space {key!r}: {kind} needs [low, high] numbers with "
                        f"low < high{' and low > 0' if kind == 'loguniform' else ''}, "
                        f"got {args!r}."
                    )
                space[key] = _DISTRIBUTIONS[kind](*args)
            else:
                raise ExperimentError(
                    f"search space {key!r}: unknown distribution {kind!r}; use one of "
                    f"{sorted([*_DISTRIBUTIONS, 'choice'])} or a list for a grid."
                )
        else:
            space[key] = value
    return space


#: ``rllib tune --scheduler``: Tune's FIFO (every trial runs its whole budget) or ASHA.
SCHEDULERS = ("fifo", "asha")
#: ASHA's defaults here: Tune's reduction factor; the grace period is 10 % of the budget.
DEFAULT_REDUCTION_FACTOR = 4.0
GRACE_FRACTION = 0.1


def make_scheduler(name: str | None, stop: dict[str, Any], *,
                   grace_period: int | None = None,
                   reduction_factor: float = DEFAULT_REDUCTION_FACTOR) -> Any:
    """The Tune scheduler of ``rllib tune --scheduler`` (None for FIFO).

    ``"asha"`` is Tune's ASHAScheduler on :data:`OBJECTIVE_KEY` (maximised), the same
    constrained score the ranking uses, so a trial over its cost limit is stopped before
    any feasible one. Its budget (``max_t``) and time unit are the experiment's
    ``training_iteration`` stop, else its ``num_env_steps_sampled_lifetime`` stop; no trial
    is stopped before ``grace_period`` of that unit (default 10 % of the budget), and at
    each rung only the best ``1 / reduction_factor`` of the trials that reached it go on.

    Raises:
        ExperimentError: unknown scheduler, no budget to schedule against, bad numbers.
    """
    if name in (None, "fifo"):
        return None
    if name != "asha":
        raise ExperimentError(f"--scheduler {name!r}: use one of {list(SCHEDULERS)}.")
    time_attr = next((k for k in ("training_iteration", STEPS_KEY) if k in (stop or {})), None)
    if time_attr is None:
        raise ExperimentError(
            "--scheduler asha needs a budget to schedule against: give a "
            "training_iteration or num_env_steps_sampled_lifetime stop, e.g. --stop "
            "'{\"training_iteration\": 100}'.")
    max_t = int(stop[time_attr])
    grace = max(1, int(max_t * GRACE_FRACTION)) if grace_period is None else int(grace_period)
    if not 1 <= grace <= max_t:
        raise ExperimentError(f"--grace-period {grace_period} is invalid: give 1 to the "
                              f"budget ({time_attr} {max_t:,}).")
    if not reduction_factor > 1:
        raise ExperimentError(f"--reduction-factor {reduction_factor:g} is invalid: give a "
                              "number > 1 (e.g. 2: half of the trials at a rung go on).")
    scheduler = tune.schedulers.ASHAScheduler(
        time_attr=time_attr, metric=OBJECTIVE_KEY, mode="max", max_t=max_t,
        grace_period=grace, reduction_factor=reduction_factor,
    )
    scheduler.rllib_kfcpo_settings = (time_attr, max_t, grace, float(reduction_factor))
    return scheduler


def asha_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """Where ASHA compares trials: ``grace_period * reduction_factor**k`` below ``max_t``."""
    rungs, t = [], float(grace_period)
    while t < max_t:
        rungs.append(int(t))
        t *= reduction_factor
    return rungs


def _scheduler_text(scheduler: Any) -> str:
    if scheduler is None:
        return "FIFO (every trial runs its whole budget)"
    time_attr, max_t, grace, factor = scheduler.rllib_kfcpo_settings
    unit = "iteration(s)" if time_attr == "training_iteration" else "env steps"
    rungs = ", ".join(f"{r:,}" for r in asha_rungs(max_t, grace, factor))
    return (f"ASHA on {OBJECTIVE_KEY}: the worst trials stop at {unit} {rungs or '-'} "
            f"(reduction factor {factor:g}; budget {max_t:,})")


def _check_search_keys(exp: Experiment, spec: dict[str, Any]) -> None:
    """Builds the config with each searched key set to a valid sample: names bad keys."""
    probe = dict(exp.config)
    for key, value in spec.items():
        if isinstance(value, list):
            probe[key] = value[0] if value else None
        elif isinstance(value, dict) and len(value) == 1:
            (_, args), = value.items()
            probe[key] = args[0] if isinstance(args, list) and args else None
        else:
            probe[key] = value
    build = Experiment(name=exp.name, run=exp.run, env=exp.env, config=probe)
    build.build_config()


def _with_objective_callback(config: Any) -> Any:
    callbacks = [c for c in force_list(config.callbacks_class)
                 if not (isinstance(c, type) and issubclass(c, SafeMetricsCallback))]
    config.callbacks_class = [ConstrainedObjectiveCallback, *callbacks]
    return config


def run_search(exp: Experiment, *, search: dict[str, Any] | None = None,
               num_samples: int = 1, storage_path: str | None = None,
               name: str | None = None, checkpoint_freq: int = 1,
               max_concurrent_trials: int | None = None, resume: bool = False,
               extra_callbacks: list[tune.Callback] | None = None,
               scheduler: str | None = None, grace_period: int | None = None,
               reduction_factor: float = DEFAULT_REDUCTION_FACTOR) -> tune.ResultGrid:
    """Runs (or with ``resume=True`` continues) a search over ``search`` for ``exp``.

    Args:
        exp: the experiment (algorithm, env, fixed config, stop criteria).
        search: JSON-style search space (see :func:`parse_search_space`); default
            the algorithm's entry of :data:`DEFAULT_SEARCH_SPACES`.
        num_samples: samples of the space (each grid point is repeated this often).
        storage_path: results root; the experiment is ``<storage_path>/<name>``.
        name: experiment name (default ``<exp.name>-search``).
        checkpoint_freq: checkpoint every this many iterations (and at the end).
        max_concurrent_trials: trials running at once (default: as many as fit).
        resume: continue the interrupted search in ``<storage_path>/<name>``.
        extra_callbacks: more Tune callbacks (the tests interrupt a search with one).
        scheduler: ``"fifo"`` (default) or ``"asha"`` (see :func:`make_scheduler`).
        grace_period: ASHA: no trial is stopped before this many iterations (or env steps,
            with an env-step budget); default 10 % of the budget.
        reduction_factor: ASHA: at each rung the best 1/reduction_factor go on.
    """
    spec = default_search_space(exp.run) if search is None else dict(search)
    space = parse_search_space(spec)
    _check_search_keys(exp, spec)
    if num_samples < 1:
        raise ExperimentError(f"--num-samples {num_samples} is invalid: give an integer >= 1.")
    trial_scheduler = make_scheduler(scheduler, exp.stop, grace_period=grace_period,
                                     reduction_factor=reduction_factor)
    config = _with_objective_callback(exp.build_config())
    name = name or f"{exp.name}-search"
    storage, exp_dir = prepare_tune_run(config, label=exp.name, name=name,
                                        storage_path=storage_path,
                                        checkpoint_freq=checkpoint_freq, resume=resume,
                                        user_config={**exp.config, **spec})
    param_space = {**config.to_dict(), **space}
    started = time.time()
    if resume:
        print(f"== resuming search {exp_dir}", flush=True)
        # The same param_space again: Tune stores classes in it (the callbacks) as object
        # references that a new Ray session must be given anew.
        tuner = tune.Tuner.restore(exp_dir, trainable=exp.run, resume_errored=True,
                                   param_space=param_space)
    else:
        print(f"== search {name}: {exp.run} on {exp.env}, cost limit {config.cost_limit:g}, "
              f"space {spec}, {num_samples} sample(s), stop {exp.stop}, results in {exp_dir}",
              flush=True)
        print(f"   scheduler: {_scheduler_text(trial_scheduler)}", flush=True)
        tuner = tune.Tuner(
            exp.run,
            param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=num_samples,
                                        max_concurrent_trials=max_concurrent_trials,
                                        scheduler=trial_scheduler),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                stop=exp.stop,
                verbose=0,
                callbacks=[ProgressPrinter(label=True, stop=exp.stop),
                           *(extra_callbacks or [])],
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=checkpoint_freq, checkpoint_at_end=True,
                    num_to_keep=2, checkpoint_score_attribute=OBJECTIVE_KEY,
                    checkpoint_score_order="max",
                ),
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
    grid = tuner.fit()
    print(f"== search {name}: done in {time.time() - started:.0f}s", flush=True)
    return grid


@dataclass
class RankedTrial:
    """One trial of a search, ranked by :func:`rank_trials`."""

    rank: int
    trial_id: str
    episode_return: float
    episode_cost: float
    cost_limit: float
    feasible: bool
    objective: float
    steps: int
    params: dict[str, Any]
    checkpoint: str | None
    path: str | None


def _rank_key(trial: RankedTrial) -> tuple[int, float]:
    if trial.feasible:
        return (0, -trial.episode_return)
    if math.isfinite(trial.episode_cost):
        return (1, trial.episode_cost - trial.cost_limit)
    return (2, 0.0)


def rank_trials(grid: Any, searched: list[str] | None = None) -> list[RankedTrial]:
    """Ranks the trials of a ResultGrid (or a list of Results) on their last result.

    Feasible trials (episode cost <= their cost limit) come first, by return (highest
    first); then infeasible ones by violation (smallest first); then trials without a
    measured cost. Errored trials without any result are left out.
    """
    searched = searched or list(DEFAULT_SEARCH_SPACE)
    ranked = []
    for result in grid:
        metrics = result.metrics or {}
        if not metrics:
            continue
        config = result.config or {}
        limit = float(config.get("cost_limit", math.nan))
        ret = float(_get(metrics, RETURN_KEY))
        cost = float(_get(metrics, COST_KEY))
        ranked.append(RankedTrial(
            rank=0,
            trial_id=str(metrics.get("trial_id", "")),
            episode_return=ret,
            episode_cost=cost,
            cost_limit=limit,
            feasible=bool(math.isfinite(cost) and cost <= limit and math.isfinite(ret)),
            objective=constrained_objective(ret, cost, limit),
            steps=int(_get(metrics, STEPS_KEY, 0)),
            params={k: config.get(k) for k in searched if k in config},
            checkpoint=result.checkpoint.path if result.checkpoint is not None else None,
            path=getattr(result, "path", None),
        ))
    ranked.sort(key=_rank_key)
    for i, trial in enumerate(ranked, 1):
        trial.rank = i
    return ranked


def leaderboard(ranked: list[RankedTrial]) -> str:
    """The ranking as a text table (feasible trials first)."""
    lines = ["rank | trial       | feasible | return     | cost / limit      | steps     | "
             "params"]
    for t in ranked:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in t.params.items())
        lines.append(
            f"{t.rank:4d} | {t.trial_id:11s} | {'yes' if t.feasible else 'NO':8s} | "
            f"{t.episode_return:10.3f} | {t.episode_cost:7.3f} / {t.cost_limit:<7g} | "
            f"{t.steps:9,d} | {params}"
        )
    return "\n".join(lines)
