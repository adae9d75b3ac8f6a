"""Episode cost bookkeeping on the env runners (written once for every safe algorithm).

The episode cost is the undiscounted sum of the raw per-step costs ``info["cost"]`` of
one whole episode. RLlib hands episodes to the learner in chunks, so the running sum is
kept in ``episode.custom_data`` (copied into every continuation chunk) and logged only
when the episode ends, with the same window as RLlib's ``episode_return_mean``.
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

from rllib_kfcpo.env_data import check_finite_step, read_step_cost
from rllib_kfcpo.safe.columns import EPISODE_COST_MAX, EPISODE_COST_MEAN, EPISODE_COST_MIN

_RUNNING_COST = "rllib_kfcpo_episode_cost"


def _window(env_runner: Any) -> int:
    # RLlib logs episode_return_mean on each of n runners with window ceil(W / n) and
    # merges the runners on the driver; doing the same keeps both metrics comparable.
    config = env_runner.config
    return max(1, math.ceil(config.metrics_num_episodes_for_smoothing
                            / max(1, config.num_env_runners or 1)))


#: Class attribute of env wrappers whose ``step`` already does what ``on_episode_step``
#: checks (``read_step_cost`` into ``info["cost"]`` and ``check_finite_step``), e.g.
#: :class:`rllib_kfcpo.envs.SafetyGymnasiumEnv`.
CHECKS_STEPS_ATTRIBUTE = "checks_steps"
_CHECKED = "_rllib_kfcpo_envs_check_themselves"


def _checks_steps(env: Any) -> bool:
    while env is not None:
        if getattr(type(env), CHECKS_STEPS_ATTRIBUTE, False):
            return True
        env = getattr(env, "env", None)
    return False


def _envs_check_themselves(env_runner: Any) -> bool:
    """Whether every sub-env of the runner's vector env checks its own steps (cached)."""
    if env_runner is None:
        return False
    cached = getattr(env_runner, _CHECKED, None)
    vector = getattr(env_runner, "env", None)
    if cached is not None and cached[0] is vector:
        return cached[1]
    envs = getattr(getattr(vector, "unwrapped", None), "envs", None)
    answer = bool(envs) and all(_checks_steps(env) for env in envs)
    try:
        setattr(env_runner, _CHECKED, (vector, answer))
    except AttributeError:  # an object without a __dict__: check every step
        pass
    return answer


class SafeMetricsCallback(RLlibCallback):
    """Accumulates ``info["cost"]`` per episode and logs ``episode_cost_mean``.

    Every step is also checked: a missing or non-finite cost, reward or observation stops
    sampling with one error naming the env and the step (also for custom envs that do not
    go through :class:`rllib_kfcpo.envs.SafetyGymnasiumEnv`). Envs whose wrapper already
    checks every step (``checks_steps = True``, as ``SafetyGymnasiumEnv``) are not checked
    a second time here.
    """

    def on_episode_start(self, *, episode, env_runner=None, **kwargs) -> None:  # noqa: D102
        episode.custom_data[_RUNNING_COST] = 0.0
        # RLlib calls this after reset(): the reset observation is in the episode.
        where = f" {env_runner.config.env!r}" if env_runner is not None else ""
        if len(episode.get_observations()):
            check_finite_step(episode.get_observations(-1), None, where=f"{where} (reset)",
                              step=0)

    def on_episode_step(self, *, episode, env_runner=None, **kwargs) -> None:  # noqa: D102
        info = episode.get_infos(-1)
        if _envs_check_themselves(env_runner):
            # The env already raised on any bad value: a float cost is all that is left.
            cost = info["cost"]
        else:
            where = ""
            if env_runner is not None:
                where = f" {env_runner.config.env!r}"
            step = int(getattr(episode, "t", len(episode)))
            cost = read_step_cost(info, where=f"{where} at step {step}")
            check_finite_step(episode.get_observations(-1), episode.get_rewards(-1),
                              where=where, step=step)
        episode.custom_data[_RUNNING_COST] = episode.custom_data.get(_RUNNING_COST, 0.0) + cost

    def on_episode_end(  # noqa: D102
        self, *, episode, env_runner=None, metrics_logger=None, **kwargs
    ) -> None:
        if metrics_logger is None or env_runner is None:
            return
        total = float(episode.custom_data.get(_RUNNING_COST, 0.0))
        window = _window(env_runner)
        metrics_logger.log_value(EPISODE_COST_MEAN, total, window=window)
        metrics_logger.log_value(EPISODE_COST_MAX, total, reduce="max", window=window)
        metrics_logger.log_value(EPISODE_COST_MIN, total, reduce="min", window=window)
