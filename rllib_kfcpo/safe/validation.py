"""Checks made on the driver before any worker starts, each with one clear error."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_kfcpo.action_spaces import action_kind
from rllib_kfcpo.env_data import read_step_cost
from rllib_kfcpo.rllib_seam import registered_env_creator

#: Env ids registered with Ray Tune by this package's env modules (added by
#: :func:`add_known_env_ids`), offered as suggestions next to gymnasium's registry.
_KNOWN_ENV_IDS: set[str] = set()


def add_known_env_ids(ids: Any) -> None:
    """Adds env ids to the suggestions of the unknown-env error (env modules call this)."""
    _KNOWN_ENV_IDS.update(ids)


def _known_env_ids() -> list[str]:
    return sorted(set(gym.registry.keys()) | _KNOWN_ENV_IDS)


def make_env_from_config(config: Any) -> gym.Env:
    """Builds one env exactly as RLlib's env runners would (tune registry, then gymnasium)."""
    from ray.rllib.env.env_context import EnvContext
    env_spec = config.env
    env_config = EnvContext(dict(config.env_config or {}), worker_index=0)
    if env_spec is None:
        raise ValueError(
            "No environment configured: call config.environment('SafetyPointGoal1-v0') "
            "(any Safety-Gymnasium task id, or an env registered with ray.tune.register_env)."
        )
    if isinstance(env_spec, str):
        creator = registered_env_creator(env_spec)
        if creator is not None:
            return creator(env_config)
        if env_spec in gym.registry:
            return gym.make(env_spec, **dict(env_config))
        if ":" in env_spec:  # gymnasium's "module:EnvId-v0": imports module, which registers
            try:
                return gym.make(env_spec, **dict(env_config))
            except (ImportError, gym.error.Error) as err:
                raise ValueError(f"Cannot make env {env_spec!r}: {err}") from err
        close = difflib.get_close_matches(env_spec, _known_env_ids(), n=5, cutoff=0.6)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Unknown environment id {env_spec!r}.{hint} Use a Safety-Gymnasium task id "
            "(list them with `python -c \"import rllib_kfcpo.envs as e; "
            "print(e.safety_task_ids())\"`) or register your own with "
            "ray.tune.register_env(name, creator)."
        )
    return env_spec(env_config)


def check_env_emits_cost(config: Any) -> None:
    """Builds one env, checks its spaces and that a step puts a finite cost in info."""
    env = make_env_from_config(config)
    try:
        action_kind(env.action_space, where=f" {config.env!r}")
        _, _ = env.reset(seed=0)
        action = np.asarray(env.action_space.sample())
        out = env.step(action)
        if len(out) != 5:
            raise ValueError(
                f"Env {config.env!r}.step() returned {len(out)} values; RLlib needs the "
                "gymnasium 5-tuple (obs, reward, terminated, truncated, info) with the cost "
                "in info['cost']. Safety-Gymnasium's native 6-tuple must be converted "
                "(the task ids registered by rllib_kfcpo do this)."
            )
        read_step_cost(out[4], where=f" {config.env!r}")
    finally:
        env.close()
