"""Safety-Gymnasium tasks as ordinary gymnasium envs, registered with Ray Tune.

Importing :mod:`rllib_kfcpo` calls :func:`register_safety_envs`, after which every
single-agent Safety-Gymnasium task id (``SafetyPointGoal1-v0``,
``SafetyHalfCheetahVelocity-v1``, ...) can be passed to ``config.environment(...)``. The
creator applies the compatibility fixes of :mod:`rllib_kfcpo.envs.compat` inside each Ray
worker, builds the task from its registered entry point and wraps it in
:class:`SafetyGymnasiumEnv`: the gymnasium 5-tuple with the cost in ``info["cost"]``, the
task's time limit, and a check that observations, rewards and costs are finite.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_kfcpo.env_data import check_finite_step, read_step_cost
from rllib_kfcpo.envs import fast_obs, fast_reset
from rllib_kfcpo.envs.compat import applied_fixes, import_safety_gymnasium

__all__ = [
    "BOOL_OPTIONS",
    "SafetyGymnasiumEnv",
    "applied_fixes",
    "import_safety_gymnasium",
    "make_safety_env",
    "register_safety_envs",
    "safety_task_ids",
]


#: The same error the env runners raise for any env's NaN/inf data (one class to catch).


class SafetyGymnasiumEnv(gym.Wrapper):
    """A Safety-Gymnasium task as a standard gymnasium env.

    ``step`` returns ``(obs, reward, terminated, truncated, info)`` with the step's cost in
    ``info["cost"]``; episodes are truncated after ``max_episode_steps``; non-finite
    observations, rewards or costs raise :class:`rllib_kfcpo.env_data.NonFiniteEnvDataError`.
    """

    #: Every step is checked here, so RLlib's per-step callback need not check it again.
    checks_steps = True

    def __init__(self, env: gym.Env, env_id: str, max_episode_steps: int | None,
                 reuse_compiled_model: bool = False) -> None:
        super().__init__(env)
        self.env_id = env_id
        self.max_episode_steps = max_episode_steps
        self.reuse_compiled_model = reuse_compiled_model
        self._elapsed = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: D102
        obs, info = self.env.reset(seed=seed, options=options)
        if self.reuse_compiled_model:
            # The world exists after the first reset; later rebuilds graft (fast_reset).
            world = getattr(getattr(self.env.unwrapped, "task", None), "world", None)
            if world is not None:
                setattr(world, fast_reset.REUSE_ATTRIBUTE, True)
        self._elapsed = 0
        check_finite_step(obs, None, where=f" {self.env_id!r} (reset)", step=0)
        info = dict(info)
        info.setdefault("cost", 0.0)
        return obs, info

    def step(self, action):  # noqa: D102
        obs, reward, cost, terminated, truncated, info = self.env.step(action)
        self._elapsed += 1
        where = f" {self.env_id!r}"
        check_finite_step(obs, reward, where=where, step=self._elapsed)
        info = {**info, "cost": cost}
        info["cost"] = read_step_cost(info, where=f"{where} at step {self._elapsed}")
        if self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps:
            truncated = True
        return obs, float(reward), bool(terminated), bool(truncated), info


@functools.cache
def safety_task_ids() -> tuple[str, ...]:
    """Every single-agent Safety-Gymnasium task id (keyboard ``Debug`` variants excluded)."""
    safety_gymnasium = import_safety_gymnasium()
    from safety_gymnasium.utils.registration import safe_registry

    del safety_gymnasium
    return tuple(sorted(i for i in safe_registry if "Debug" not in i))


#: env_config keys of :func:`make_safety_env` that are ours, not the task constructor's.
BOOL_OPTIONS = ("fast_observations", "reuse_compiled_model")


def _bool_option(kwargs: dict[str, Any], key: str) -> bool | None:
    """Pops ``key`` (True, False, or absent -> None); anything else is one clear error."""
    value = kwargs.pop(key, None)
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise ValueError(f"env_config[{key!r}] must be true or false (a bool), got {value!r} "
                     f"of type {type(value).__name__}.")


def _is_navigation(env: gym.Env) -> bool:
    return getattr(env.unwrapped, "task", None) is not None


def make_safety_env(env_id: str, env_config: dict[str, Any] | None = None) -> gym.Env:
    """Builds one Safety-Gymnasium task (works in any process, Ray workers included).

    Args:
        env_id: a task id such as ``"SafetyPointGoal1-v0"``.
        env_config: keyword arguments of the task's constructor (e.g. ``render_mode``),
            plus optionally ``max_episode_steps`` to override the task's time limit, and
            two switches of the navigation tasks (both on by default; ``false`` gives
            safety-gymnasium's own code, to compare the two anywhere):

            * ``reuse_compiled_model``: keep the compiled MuJoCo model across resets
              instead of recompiling it (with its 191 MB skybox) for every new layout;
              layouts, physics and observations are unchanged (see
              :mod:`rllib_kfcpo.envs.fast_reset`), a reset costs milliseconds instead
              of ~0.25 s.
            * ``fast_observations``: observations, rewards and costs computed by
              :mod:`rllib_kfcpo.envs.fast_obs` (numpy over objects and lidar bins, ids
              looked up once): the same numbers, 2-5x faster steps. Explicitly true with
              a safety-gymnasium other than 1.0.0 is an error; by default it is then
              off, with a warning.

    Raises:
        ValueError: an unknown task id, or a switch that is not a bool.
    """
    import_safety_gymnasium()
    if env_id not in safety_task_ids():
        raise ValueError(f"{env_id!r} is not a Safety-Gymnasium task id; see "
                         "rllib_kfcpo.envs.safety_task_ids().")
    kwargs = dict(env_config or {})
    spec = gym.spec(env_id)
    max_steps = kwargs.pop("max_episode_steps", spec.max_episode_steps)
    reuse = _bool_option(kwargs, "reuse_compiled_model")
    fast = _bool_option(kwargs, "fast_observations")
    creator = gym.envs.registration.load_env_creator(spec.entry_point)
    env = creator(**{**spec.kwargs, **kwargs})
    navigation = _is_navigation(env)
    if fast is not False and navigation:
        supported, reason = fast_obs.supported()
        if supported:
            fast_obs.install(env.unwrapped)
        elif fast:
            raise RuntimeError(f"env_config['fast_observations'] is true but {reason}; "
                               "set it to false.")
        else:
            _warn_once(f"{reason}: using safety-gymnasium's own observation code.")
    return SafetyGymnasiumEnv(env, env_id, max_steps,
                              reuse_compiled_model=navigation if reuse is None else reuse)


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _creator(env_id: str, env_config: Any) -> gym.Env:
    # RLlib's EnvContext is a dict subclass with worker metadata: pass only the keys.
    return make_safety_env(env_id, dict(env_config or {}))


def register_safety_envs() -> None:
    """Registers every task id of :func:`safety_task_ids` with Ray Tune (idempotent)."""
    from ray.tune.registry import register_env

    from rllib_kfcpo.safe.validation import add_known_env_ids

    for env_id in safety_task_ids():
        register_env(env_id, functools.partial(_creator, env_id))
    add_known_env_ids(safety_task_ids())
