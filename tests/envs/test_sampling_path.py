"""The sampling fast path samples exactly what RLlib's own path samples.

Two changes make the env runners cheaper per env step (docs/benchmarks.md, section 2):
``SafeActorCriticTorchModule.forward_exploration``/``forward_inference`` skip RLlib's
per-call ``eval()``/``train()`` walk, and the env runners' connector pipelines record
their timing metrics on one call in ``connector_timing_interval``. Neither may change
the data: with a fixed seed the episodes must be bit-identical to RLlib's path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.connectors.env_to_module import EnvToModulePipeline
from ray.rllib.connectors.module_to_env import ModuleToEnvPipeline
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from torch import nn

import rllib_kfcpo  # noqa: F401  (registers the envs)
from rllib_kfcpo import KFCPOConfig
from rllib_kfcpo.modules.safe_actor_critic import SafeActorCriticTorchModule
from rllib_kfcpo.safe.connectors import (
    SampledTimingEnvToModulePipeline,
    SampledTimingModuleToEnvPipeline,
)

ENV = "SafetyHalfCheetahVelocity-v1"


def _config(num_envs: int, interval: int | None = None) -> KFCPOConfig:
    config = (
        KFCPOConfig()
        .environment(ENV)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs,
                     rollout_fragment_length="auto")
        .debugging(seed=7)
    )
    if interval is not None:
        config.connector_timing(interval)
    return config


def _sample(config: KFCPOConfig, steps: int) -> dict[str, np.ndarray]:
    """Everything the learner gets from ``steps`` env steps, concatenated per column."""
    runner = SingleAgentEnvRunner(config=config)
    try:
        episodes = runner.sample(num_timesteps=steps) + runner.sample(num_timesteps=steps)
        # Episodes are returned in the same order for the same seed and layout.
        out: dict[str, list[np.ndarray]] = {
            "obs": [], "actions": [], "rewards": [], "logp": [], "dist": [], "costs": []}
        for ep in episodes:
            out["obs"].append(np.asarray(ep.get_observations()))
            out["actions"].append(np.asarray(ep.get_actions()))
            out["rewards"].append(np.asarray(ep.get_rewards()))
            out["logp"].append(np.asarray(ep.get_extra_model_outputs(Columns.ACTION_LOGP)))
            out["dist"].append(
                np.asarray(ep.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS)))
            out["costs"].append(np.asarray([i["cost"] for i in ep.get_infos()[1:]]))
        filter_state = runner.get_state()
        return {**{k: np.concatenate(v) for k, v in out.items()},
                "n_episodes": np.asarray(len(episodes)),
                "env_steps": np.asarray(sum(len(ep) for ep in episodes)),
                "filter": np.asarray(repr(filter_state.get("env_to_module_connector")))}
    finally:
        runner.stop()


def _rllib_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make our module use RLlib's own forward_exploration/forward_inference again."""
    monkeypatch.setattr(SafeActorCriticTorchModule, "forward_exploration",
                        TorchRLModule.forward_exploration)
    monkeypatch.setattr(SafeActorCriticTorchModule, "forward_inference",
                        TorchRLModule.forward_inference)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_fast_path_samples_the_same_episodes_as_rllibs_path(
    monkeypatch: pytest.MonkeyPatch, num_envs: int
) -> None:
    fast = _sample(_config(num_envs), steps=150)
    with monkeypatch.context() as m:
        _rllib_forward(m)
        rllib = _sample(_config(num_envs, interval=1), steps=150)
    assert fast["env_steps"] >= 300
    assert set(fast) == set(rllib)
    for key in fast:
        np.testing.assert_array_equal(fast[key], rllib[key], err_msg=key)
    # Not vacuous: the policy explores (a different seed gives different actions).
    other = _sample(_config(num_envs).debugging(seed=8), steps=150)
    assert not np.array_equal(other["actions"], fast["actions"])


def test_forward_passes_do_not_toggle_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    module = SingleAgentEnvRunner(config=_config(1)).module
    assert module.training and not module.has_mode_dependent_layers()
    calls: list[bool] = []
    original = nn.Module.train

    def counting_train(self: nn.Module, mode: bool = True) -> nn.Module:
        calls.append(mode)
        return original(self, mode)

    obs = torch.randn(5, *module.observation_space.shape)
    monkeypatch.setattr(nn.Module, "train", counting_train)
    fast_expl = module.forward_exploration({Columns.OBS: obs})
    fast_inf = module.forward_inference({Columns.OBS: obs})
    assert calls == []
    rllib_expl = TorchRLModule.forward_exploration(module, {Columns.OBS: obs})
    rllib_inf = TorchRLModule.forward_inference(module, {Columns.OBS: obs})
    assert calls, "RLlib's path toggles eval()/train() (the counter works)"
    assert module.training
    for fast, rllib in ((fast_expl, rllib_expl), (fast_inf, rllib_inf)):
        torch.testing.assert_close(fast[Columns.ACTION_DIST_INPUTS],
                                   rllib[Columns.ACTION_DIST_INPUTS], rtol=0, atol=0)
        assert not fast[Columns.ACTION_DIST_INPUTS].requires_grad


class _DropoutModule(SafeActorCriticTorchModule):
    """A subclass with a mode-dependent layer: it must keep RLlib's eval() toggling."""

    def setup(self) -> None:
        super().setup()
        self.pi = nn.Sequential(nn.Dropout(p=0.9), *self.pi)


def test_mode_dependent_subclass_keeps_rllibs_toggling() -> None:
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    runner_module = SingleAgentEnvRunner(config=_config(1)).module
    module = RLModuleSpec(
        module_class=_DropoutModule,
        observation_space=runner_module.observation_space,
        action_space=runner_module.action_space,
        inference_only=True,
    ).build()
    assert module.training and module.has_mode_dependent_layers()
    obs = torch.randn(64, *module.observation_space.shape)
    out = [module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
           for _ in range(2)]
    # In eval mode dropout is off: two calls agree; the module is back in train mode.
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert module.training
    train_out = module.pi(obs)
    assert not torch.equal(train_out, module.pi(obs))  # dropout is on in train mode


class _RecordingMetrics:
    """Records the keys of every ``log_time``/``log_value`` call (a MetricsLogger stand-in)."""

    def __init__(self) -> None:
        self.timed: list[tuple] = []
        self.values: list[str] = []

    def log_time(self, key: tuple) -> _RecordingMetrics:
        self.timed.append(tuple(key))
        return self

    def log_value(self, key: str, value: float, **kwargs: object) -> None:
        self.values.append(key)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def test_pipelines_time_one_call_in_interval() -> None:
    config = _config(1, interval=3)
    runner = SingleAgentEnvRunner(config=config)
    try:
        assert isinstance(runner._env_to_module, SampledTimingEnvToModulePipeline)
        assert isinstance(runner._env_to_module, EnvToModulePipeline)
        assert isinstance(runner._module_to_env, SampledTimingModuleToEnvPipeline)
        assert isinstance(runner._module_to_env, ModuleToEnvPipeline)
        assert runner._env_to_module.timing_interval == 3
        pieces = len(runner._env_to_module.connectors)
        runner.sample(num_timesteps=50)
        # The env runner's timer metrics keep their keys (timed on 1 call in 3).
        flat = repr(runner.get_metrics())
        # A fresh pipeline with the same pieces (the runner's has been called already).
        pipeline = SampledTimingEnvToModulePipeline.from_pipeline(runner._env_to_module, 3)
        metrics = _RecordingMetrics()
        for _ in range(7):
            pipeline(rl_module=runner.module, episodes=list(runner._ongoing_episodes),
                     explore=True, metrics=metrics)
        # Calls 0, 3 and 6 are timed: the pipeline timer plus one per piece, each time,
        # and EnvToModulePipeline's two episode-length values.
        assert len(metrics.timed) == 3 * (1 + pieces)
        assert len(metrics.values) == 3 * 2
        # The restore path (checkpoints) rebuilds it with the same interval.
        _, kwargs = pipeline.get_ctor_args_and_kwargs()
        assert kwargs["timing_interval"] == 3
        assert "connector_pipeline_timer" in flat
        assert "mean_std_filter" in flat
    finally:
        runner.stop()


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "10"])
def test_connector_timing_interval_is_validated(bad: object) -> None:
    config = KFCPOConfig().environment(ENV).connector_timing(bad)
    with pytest.raises(ValueError, match="connector_timing"):
        config.validate()
    with pytest.raises(ValueError, match="timing_interval"):
        SampledTimingModuleToEnvPipeline(timing_interval=bad)
