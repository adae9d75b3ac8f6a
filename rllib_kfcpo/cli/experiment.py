"""RLlib's classic tuned-example format, read and checked before anything starts.

A YAML file maps experiment names to ``{run, env, stop, config}``::

    point-goal1-kfcpo:
      run: KFCPO
      env: SafetyPointGoal1-v0
      stop: {num_env_steps_sampled_lifetime: 10000000}
      config: {cost_limit: 25.0, train_batch_size: 20000}

Every problem (malformed YAML, unknown algorithm, env or config key) is reported as one
:class:`ExperimentError` naming the problem and the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rllib_kfcpo.rllib_seam import MODEL_CONFIG_ATTRIBUTE, translate_config_key

EXPERIMENT_KEYS = {"run", "env", "stop", "config", "checkpoint_freq", "checkpoint_at_end",
                   "num_samples", "seeds"}
#: Friendly spellings of config keys that RLlib stores under another name.
CONFIG_ALIASES = {"model_config": MODEL_CONFIG_ATTRIBUTE, "model": MODEL_CONFIG_ATTRIBUTE}
#: ``rllib train --smoke``: tiny budgets that check a tuned example runs end to end in
#: seconds (one local env runner, 200 env steps, one epoch), before a long run.
SMOKE_CONFIG: dict[str, Any] = {
    "train_batch_size": 200,
    "minibatch_size": 100,
    "num_epochs": 1,
    "num_env_runners": 0,
    "num_envs_per_env_runner": 1,
}
SMOKE_STOP: dict[str, Any] = {"training_iteration": 1}
#: Episode length under ``--smoke`` for Safety-Gymnasium tasks (1,000 steps otherwise) and
#: the demo's PointGoalHazard-v0 (150), so
#: that a smoke run finishes episodes and reports a return and an episode cost.
SMOKE_EPISODE_STEPS = 50


def apply_smoke(exp: Experiment, user_config: dict[str, Any] | None = None) -> None:
    """Shrinks ``exp`` to :data:`SMOKE_CONFIG` budgets; ``user_config`` keys still win."""
    user_config = user_config or {}
    exp.config.update({k: v for k, v in SMOKE_CONFIG.items() if k not in user_config})
    from rllib_kfcpo.envs import safety_task_ids
    from rllib_kfcpo.envs.point_goal_hazard import POINT_GOAL_HAZARD_ENV

    if exp.env in safety_task_ids() or exp.env == POINT_GOAL_HAZARD_ENV:
        env_config = dict(exp.config.get("env_config") or {})
        env_config.setdefault("max_episode_steps", SMOKE_EPISODE_STEPS)
        exp.config["env_config"] = env_config


class ExperimentError(ValueError):
    """A tuned-example file or command line that cannot run, with the reason and fix."""


def algorithms() -> dict[str, Any]:
    """Algorithm name -> config class, for every algorithm the CLI can run."""
    from rllib_kfcpo import CPOConfig, KFCPOConfig, PPOLagConfig, PPOPIDLagConfig

    return {"KFCPO": KFCPOConfig, "PPOLag": PPOLagConfig, "PPOPIDLag": PPOPIDLagConfig,
            "CPO": CPOConfig}


@dataclass
class Experiment:
    """One experiment of a tuned-example file."""

    name: str
    run: str
    env: str
    stop: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint_freq: int = 0
    seeds: list[int] = field(default_factory=list)

    def build_config(self) -> Any:
        """The validated AlgorithmConfig of this experiment (raises ExperimentError)."""
        check_stop_criteria(self.stop, where=self.name)
        return build_algorithm_config(self.run, self.env, self.config, where=self.name)


#: Top-level keys of a training result that a stop criterion can name (RLlib 2.60 + Tune).
STOP_KEYS = (
    "training_iteration", "num_env_steps_sampled_lifetime", "time_total_s",
    "time_this_iter_s", "time_since_restore", "iterations_since_restore", "timestamp",
    "num_training_step_calls_per_iteration",
)
#: Result sections whose nested metrics (``section/.../metric``) a stop criterion can name;
#: their leaves depend on the algorithm and env, so any path below them is accepted.
STOP_SECTIONS = ("env_runners", "learners", "timers", "perf", "fault_tolerance",
                 "env_runner_group", "evaluation")
#: Nested metrics worth suggesting when a stop key is misspelt.
STOP_SUGGESTIONS = (
    *STOP_KEYS, "env_runners/episode_return_mean", "env_runners/episode_cost_mean",
    "env_runners/episode_cost_window_mean", "env_runners/num_env_steps_sampled_lifetime",
    "env_runners/num_episodes_lifetime",
)


def check_stop_criteria(stop: dict[str, Any], where: str = "command line") -> None:
    """Refuses stop keys that no result has (Tune would warn once and never stop)."""
    if not isinstance(stop, dict):
        raise ExperimentError(f"[{where}] stop must be a mapping of metric -> value, e.g. "
                              '{"training_iteration": 10}; got ' f"{stop!r}.")
    for key, value in stop.items():
        head = str(key).split("/", 1)[0]
        if key in STOP_KEYS or ("/" in str(key) and head in STOP_SECTIONS):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ExperimentError(f"[{where}] stop {key!r}: {value!r} is not a number; "
                                      "give the value at which to stop.")
            continue
        raise ExperimentError(
            f"[{where}] unknown stop key {key!r}.{_suggest(str(key), list(STOP_SUGGESTIONS))} "
            f"Stop keys are result metrics: {', '.join(STOP_KEYS[:3])}, or a nested path "
            f"under {', '.join(s + '/' for s in STOP_SECTIONS[:2])}..."
        )


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def build_algorithm_config(run: str, env: str, overrides: dict[str, Any],
                           where: str = "command line") -> Any:
    """Algorithm config for ``run`` on ``env`` with ``overrides``; checks every key."""
    known = algorithms()
    if run not in known:
        raise ExperimentError(
            f"[{where}] unknown algorithm {run!r}.{_suggest(run, list(known))} "
            f"Available: {sorted(known)}."
        )
    config = known[run]()
    unknown = []
    translated = {}
    for key, value in (overrides or {}).items():
        real = CONFIG_ALIASES.get(key, translate_config_key(key))
        if real in ("env", "environment"):
            raise ExperimentError(f"[{where}] set the env with `env:` next to `config:`, "
                                  "not inside config.")
        if not (hasattr(config, real) or real == "multiagent"):
            unknown.append(key)
        translated[real] = value
    if unknown:
        options = sorted(k for k in vars(config) if not k.startswith("__"))
        hints = " ".join(f"{k!r}:{_suggest(k, options) or ' no close match.'}" for k in unknown)
        raise ExperimentError(
            f"[{where}] unknown config key(s) for {run}: {hints} Fix the spelling or remove "
            f"the key; see `rllib train --help-config {run}` for every key."
        )
    config.update_from_dict(translated)
    config.environment(env)
    try:
        from rllib_kfcpo.safe.validation import make_env_from_config

        make_env_from_config(config).close()
    except ValueError as err:
        raise ExperimentError(f"[{where}] {err}") from err
    try:
        config.validate()
    except ValueError as err:
        raise ExperimentError(f"[{where}] invalid config: {err}") from err
    return config


def load_experiments(path: str | Path) -> list[Experiment]:
    """Reads and checks a tuned-example YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"No such file: {str(path)!r}. Give the path of a tuned "
                              "example, e.g. tuned_examples/kfcpo/safety-point-goal1.yaml.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ExperimentError(f"Malformed YAML in {str(path)!r}: {err}") from err
    if not isinstance(data, dict) or not data:
        raise ExperimentError(
            f"{str(path)!r} must map experiment names to {{run, env, stop, config}}, "
            f"got {type(data).__name__}."
        )
    experiments = []
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise ExperimentError(f"[{name}] must be a mapping with run/env/stop/config.")
        extra = set(spec) - EXPERIMENT_KEYS
        if extra:
            raise ExperimentError(
                f"[{name}] unknown experiment key(s) {sorted(extra)}; allowed: "
                f"{sorted(EXPERIMENT_KEYS)} (algorithm settings go under `config:`)."
            )
        for required in ("run", "env"):
            if required not in spec:
                raise ExperimentError(f"[{name}] missing `{required}:`.")
        experiments.append(Experiment(
            name=str(name), run=str(spec["run"]), env=str(spec["env"]),
            stop=dict(spec.get("stop") or {}), config=dict(spec.get("config") or {}),
            checkpoint_freq=int(spec.get("checkpoint_freq", 0)),
            seeds=[int(s) for s in spec.get("seeds", [])],
        ))
    return experiments
