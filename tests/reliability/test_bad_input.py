"""Bad input is refused before any work is lost, with one error naming key, value and fix.

Config checks run in ``config.validate()`` (called by ``build_algo()`` and by
``rllib train`` before Ray starts); env, resource and checkpoint checks run on a real
local Ray instance (``ray_local``) before any learner is built.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from rllib_kfcpo import CPOConfig, KFCPOConfig, PPOLagConfig, PPOPIDLagConfig
from rllib_kfcpo.action_spaces import UnsupportedActionSpaceError
from rllib_kfcpo.algorithms.kfcpo.kfcpo import KFCPO
from rllib_kfcpo.algorithms.ppo_lag.ppo_lag import PPOLag
from rllib_kfcpo.cli.main import main
from rllib_kfcpo.env_data import MissingCostError, NonFiniteEnvDataError
from rllib_kfcpo.envs.toy import ACTION_COST_ENV
from rllib_kfcpo.safe.checkpoints import META_FORMAT_VERSION, CheckpointMismatchError
from rllib_kfcpo.safe.learner import COMPONENT_SAFE_STATE, LearnerStateMismatchError
from rllib_kfcpo.safe.resources import ClusterResourceError
from tests.reliability import envs as bad_envs


def tiny(config_cls=KFCPOConfig, env: str = ACTION_COST_ENV, runners: int = 0):
    """A tiny, fast config on a toy env."""
    return (
        config_cls()
        .environment(env)
        .env_runners(num_env_runners=runners, rollout_fragment_length=100)
        .training(train_batch_size=200, minibatch_size=100, num_epochs=1, cost_limit=5.0)
        .debugging(seed=0)
    )


# --- Config values (no Ray needed) -------------------------------------------------------
BAD_VALUES = [
    # (config class, method, key, value, text that must appear in the error)
    (KFCPOConfig, "training", "cost_limit", -1.0, "finite number >= 0"),
    (KFCPOConfig, "training", "cost_limit", math.nan, "finite number >= 0"),
    (PPOLagConfig, "training", "cost_limit", math.inf, "finite number >= 0"),
    (KFCPOConfig, "training", "cost_limit", "25", "finite number >= 0"),
    (KFCPOConfig, "training", "train_batch_size", 0, "positive integer"),
    (PPOLagConfig, "training", "train_batch_size", -200, "positive integer"),
    (KFCPOConfig, "training", "minibatch_size", 0, "positive integer"),
    (PPOLagConfig, "training", "minibatch_size", -1, "positive integer"),
    (KFCPOConfig, "training", "num_epochs", 0, "positive integer"),
    (KFCPOConfig, "training", "cost_gamma", 1.5, "in [0, 1]"),
    (KFCPOConfig, "training", "kfac_damping", 0.0, "finite number > 0"),
    (KFCPOConfig, "training", "kfac_damping", math.nan, "finite number > 0"),
    (KFCPOConfig, "training", "kfac_decay", 1.0, "in (0, 1)"),
    (KFCPOConfig, "training", "kfac_decay", 0.0, "in (0, 1)"),
    (KFCPOConfig, "training", "kfac_burn_in", -1, "integer >= 0"),
    (KFCPOConfig, "training", "kfac_inv_update_steps", 0, "integer >= 1"),
    (KFCPOConfig, "training", "kfac_inv_update_steps", 2.5, "integer >= 1"),
    (KFCPOConfig, "training", "normalize_directions", "yes", "True or False"),
    (KFCPOConfig, "training", "margin_cost_ema", 1.5, "in (0, 1]"),
    (KFCPOConfig, "training", "margin_integral_gain", -0.1, "finite number >= 0"),
    (KFCPOConfig, "training", "margin_pid_gains", [0.1, 0.01], "three finite numbers >= 0"),
    (KFCPOConfig, "training", "margin_pid_gains", (0.1, -0.01, 0.0), "three finite numbers"),
    (KFCPOConfig, "training", "margin_multiplier_max", 0.0, "None or a finite number > 0"),
    (KFCPOConfig, "training", "margin_pid_init", -1.0, "None or a finite number >= 0"),
    (KFCPOConfig, "training", "margin_pid_unwind_gain", -0.1, "None or a finite number >= 0"),
    (KFCPOConfig, "training", "log_std_trust_region_kl", 0.0, "None or a finite number > 0"),
    (KFCPOConfig, "training", "step_rule", "cpo", "one of ('blend', 'span')"),
    (KFCPOConfig, "training", "gradient_averaging", "reward", "one of ('none', 'cost', 'both')"),
    (KFCPOConfig, "training", "adaptive_trust_region", 1, "True or False"),
    (PPOLagConfig, "training", "cost_window_episodes", -1, "integer >= 0"),
    (KFCPOConfig, "training", "cost_window_episodes", True, "integer >= 0"),
    (PPOLagConfig, "training", "cost_advantages", "scale", "one of ('standardize', "),
    (KFCPOConfig, "training", "rollback_backtracks", -1, "an integer in [0, 20]"),
    (KFCPOConfig, "training", "target_kl", 0.0, "finite number > 0"),
    (KFCPOConfig, "training", "trust_region_kl", -1e-3, "finite number > 0"),
    (KFCPOConfig, "training", "max_step_size", math.inf, "finite number > 0"),
    (KFCPOConfig, "training", "margin_schedule", "linear", "one of"),
    (KFCPOConfig, "training", "projection", "all", "one of"),
    (PPOLagConfig, "training", "lagrangian_multiplier_init", -0.1, "finite number >= 0"),
    (PPOLagConfig, "training", "lagrangian_multiplier_lr", 0.0, "finite number > 0"),
    (PPOLagConfig, "training", "lagrangian_upper_bound", 0.0, "number > 0"),
    (PPOPIDLagConfig, "training", "pid_kp", -0.1, "finite number >= 0"),
    (PPOPIDLagConfig, "training", "pid_ki", math.inf, "finite number >= 0"),
    (PPOPIDLagConfig, "training", "pid_kd", True, "finite number >= 0"),
    (PPOPIDLagConfig, "training", "pid_d_delay", 0, "integer >= 1"),
    (PPOPIDLagConfig, "training", "pid_d_delay", 2.5, "integer >= 1"),
    (PPOPIDLagConfig, "training", "pid_delta_p_ema_alpha", 1.0, "in [0, 1)"),
    (PPOPIDLagConfig, "training", "pid_delta_d_ema_alpha", -0.1, "in [0, 1)"),
    (PPOPIDLagConfig, "training", "sum_norm", 1, "True or False"),
    (PPOPIDLagConfig, "training", "diff_norm", "no", "True or False"),
    (PPOPIDLagConfig, "training", "penalty_max", 0.0, "number > 0"),
    (PPOPIDLagConfig, "training", "lagrangian_multiplier_init", -1.0, "finite number >= 0"),
    (CPOConfig, "training", "target_kl", 0.0, "finite number > 0"),
    (CPOConfig, "training", "target_kl", True, "finite number > 0"),
    (CPOConfig, "training", "cg_iters", 0, "integer >= 1"),
    (CPOConfig, "training", "cg_iters", 15.0, "integer >= 1"),
    (CPOConfig, "training", "cg_damping", -0.1, "finite number >= 0"),
    (CPOConfig, "training", "fvp_sample_freq", 0, "integer >= 1"),
    (CPOConfig, "training", "line_search_steps", 0, "integer >= 1"),
    (CPOConfig, "training", "line_search_decay", 1.0, "in (0, 1)"),
    (CPOConfig, "training", "cost_limit", -5.0, "finite number >= 0"),
    (KFCPOConfig, "learners", "num_learners", -1, ">= 0"),
    (KFCPOConfig, "learners", "num_gpus_per_learner", -1, ">= 0"),
    (KFCPOConfig, "env_runners", "num_env_runners", -2, ">= 0"),
    # RLlib's env_runners() refuses 0 itself; a direct attribute write is caught by ours.
    (KFCPOConfig, "attribute", "rollout_fragment_length", 0, "'auto' or a positive"),
]


@pytest.mark.parametrize(("config_cls", "method", "key", "value", "allowed"), BAD_VALUES,
                         ids=[f"{c.__name__}-{k}={v!r}" for c, _, k, v, _ in BAD_VALUES])
def test_bad_value_is_named_with_what_is_allowed(config_cls, method, key, value, allowed):
    config = tiny(config_cls)
    if method == "attribute":
        setattr(config, key, value)
    else:
        getattr(config, method)(**{key: value})
    with pytest.raises(ValueError) as info:
        config.validate()
    message = str(info.value).splitlines()[0]
    assert f"{key}={value!r}" in message
    assert allowed in message


def test_minibatch_larger_than_batch_names_both_and_the_fix():
    config = tiny().training(train_batch_size=200, minibatch_size=300)
    with pytest.raises(ValueError) as info:
        config.validate()
    message = str(info.value)
    assert "minibatch_size=300" in message and "train_batch_size 200" in message
    assert "at most 200" in message


def test_minibatch_is_compared_with_the_per_learner_batch():
    config = tiny().learners(num_learners=2).training(train_batch_size=200,
                                                      minibatch_size=150)
    with pytest.raises(ValueError, match=r"per-learner train batch \(100"):
        config.validate()


def test_learners_sharing_a_gpu_are_refused_with_the_fix():
    """Two learners on half a GPU each fail inside NCCL after they start (measured on an
    H200: "Duplicate GPU detected"); the config refuses it first, naming both keys."""
    config = tiny().learners(num_learners=2, num_gpus_per_learner=0.5).training(
        train_batch_size=400, minibatch_size=100)
    with pytest.raises(ValueError) as info:
        config.validate()
    message = str(info.value)
    assert "num_learners=2, num_gpus_per_learner=0.5" in message
    assert "num_gpus_per_learner=1" in message and "num_gpus_per_learner=0)" in message
    tiny().learners(num_learners=1, num_gpus_per_learner=0.5).validate()  # one learner: fine


def test_multiplier_above_its_bound():
    config = tiny(PPOLagConfig).training(lagrangian_multiplier_init=2.0,
                                         lagrangian_upper_bound=1.0)
    with pytest.raises(ValueError, match="above lagrangian_upper_bound=1.0"):
        config.validate()


def test_good_config_passes():
    tiny().validate()
    tiny(PPOLagConfig).validate()
    tiny(PPOPIDLagConfig).validate()
    tiny(CPOConfig).validate()


# --- Envs (real env construction; remote env runners on real Ray) ------------------------
def test_unknown_env_id(ray_local):
    with pytest.raises(ValueError, match="Unknown environment id 'SafetyPointGaol1-v0'"):
        tiny(env="SafetyPointGaol1-v0").build_algo()


def test_env_without_cost(ray_local):
    with pytest.raises(MissingCostError) as info:
        tiny(env=bad_envs.NO_COST_ENV).build_algo()
    assert bad_envs.NO_COST_ENV in str(info.value) and "info['cost']" in str(info.value)
    assert "'other'" in str(info.value)  # the keys the env did return


def test_unsupported_action_space(ray_local):
    """MultiDiscrete is refused on the driver before any worker starts, naming the env, the
    space and what is supported (Discrete itself is supported: tests/algorithms/
    test_discrete.py)."""
    with pytest.raises(UnsupportedActionSpaceError, match="do not support") as info:
        tiny(env=bad_envs.MULTI_DISCRETE_ENV).build_algo()
    message = str(info.value)
    assert bad_envs.MULTI_DISCRETE_ENV in message and "MultiDiscrete([2 3])" in message
    assert "supported: Box" in message and "Discrete starting at 0" in message


@pytest.mark.parametrize(("env", "runners", "what", "step"), [
    (bad_envs.NAN_REWARD_ENV, 1, "non-finite reward", bad_envs.BAD_STEP),  # remote runner
    (bad_envs.NAN_OBS_ENV, 0, "non-finite observation", bad_envs.BAD_STEP),  # local runner
    (bad_envs.INF_COST_ENV, 0, "non-finite cost", bad_envs.BAD_STEP),
    (bad_envs.NAN_RESET_ENV, 0, "non-finite observation", 0),
])
def test_non_finite_env_data_is_one_clear_error(ray_local, env, runners, what, step):
    """A custom env's NaN/inf reaches the driver as one error naming env and step.

    A remote runner exits on any exception (RLlib's ``apply``) and, with
    ``restart_failed_env_runners`` (the default), is restarted: without the package's
    sampling loop the driver would see only "actor died", over and over.
    """
    algo = tiny(env=env, runners=runners).build_algo()
    try:
        with pytest.raises(NonFiniteEnvDataError) as info:
            algo.train()
    finally:
        algo.stop()
    message = str(info.value)
    assert what in message and repr(env) in message
    assert f"step {step}" in message


# --- Cluster resources (checked against ray.cluster_resources() before learners) ---------
def test_more_learners_than_cluster_cpus(ray_local):
    started = time.time()
    with pytest.raises(ClusterResourceError) as info:
        tiny(runners=1).learners(num_learners=8).training(train_batch_size=1600).build_algo()
    message = str(info.value)
    assert "num_learners=8" in message and "need 9 CPUs" in message
    assert "the Ray cluster has 4" in message
    assert time.time() - started < 30  # refused before any learner actor started


def test_gpus_beyond_the_cluster(ray_local):
    with pytest.raises(ClusterResourceError) as info:
        tiny().learners(num_learners=1, num_gpus_per_learner=1).build_algo()
    assert "num_gpus_per_learner=1" in str(info.value)
    assert "needs 1 GPU(s), but the Ray cluster has 0" in str(info.value)


def test_cli_refuses_learners_beyond_the_cluster_before_tune(ray_local, capsys, tmp_path):
    code = main(["train", "--algo", "KFCPO", "--env", ACTION_COST_ENV,
                 "--storage-path", str(tmp_path),
                 "--config", '{"num_learners": 16, "train_batch_size": 1600, '
                             '"minibatch_size": 100}'])
    err = capsys.readouterr().err
    assert code == 2
    assert "num_learners=16" in err and "the Ray cluster has 4" in err
    assert not list(tmp_path.rglob("progress.csv"))  # no trial started


# --- YAML and CLI --------------------------------------------------------------------------
def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("exp:\n  run: KFCPO\n  env: [unclosed\n")
    assert main(["train", "file", str(bad)]) == 2
    assert "Malformed YAML" in capsys.readouterr().err


def test_unknown_yaml_keys(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text(f"exp:\n  run: KFCPO\n  env: {ACTION_COST_ENV}\n  confg: {{}}\n")
    assert main(["train", "file", str(path)]) == 2
    assert "unknown experiment key(s) ['confg']" in capsys.readouterr().err
    path.write_text(f"exp:\n  run: KFCPO\n  env: {ACTION_COST_ENV}\n"
                    "  config: {kfac_dampin: 0.1}\n")
    assert main(["train", "file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'kfac_dampin'" in err and "'kfac_damping'" in err


def test_bad_value_in_yaml(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text(f"exp:\n  run: KFCPO\n  env: {ACTION_COST_ENV}\n"
                    "  config: {kfac_decay: 1.5}\n")
    assert main(["train", "file", str(path)]) == 2
    assert "kfac_decay=1.5" in capsys.readouterr().err


# --- Checkpoints from another algorithm or format version ---------------------------------
@pytest.fixture(scope="module")
def checkpoints(ray_local, tmp_path_factory):
    """One real PPOLag and one real KFCPO checkpoint (after one iteration each)."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for name, cls in [("PPOLag", PPOLagConfig), ("KFCPO", KFCPOConfig)]:
        algo = tiny(cls).build_algo()
        try:
            algo.train()
            paths[name] = Path(algo.save_to_path(str(root / name)))
        finally:
            algo.stop()
    return paths


def test_ppolag_checkpoint_restored_as_kfcpo_is_refused(checkpoints):
    with pytest.raises(CheckpointMismatchError) as info:
        KFCPO.from_checkpoint(str(checkpoints["PPOLag"]))
    assert "written by PPOLag, not KFCPO" in str(info.value)
    with pytest.raises(CheckpointMismatchError, match="written by KFCPO, not PPOLag"):
        PPOLag.from_checkpoint(str(checkpoints["KFCPO"]))


def test_restore_into_a_running_algorithm_is_refused_and_changes_nothing(checkpoints):
    from tests.helpers import learner_weights

    algo = tiny().build_algo()
    try:
        before = learner_weights(algo)[0]
        with pytest.raises(CheckpointMismatchError, match="written by PPOLag"):
            algo.restore_from_path(str(checkpoints["PPOLag"]))
        after = learner_weights(algo)[0]
        assert all((before[k] == after[k]).all() for k in before)
        algo.train()  # still usable
    finally:
        algo.stop()


def test_incompatible_format_version_is_refused(checkpoints, tmp_path):
    import shutil

    copy = tmp_path / "kfcpo_v99"
    shutil.copytree(checkpoints["KFCPO"], copy)
    meta = json.loads((copy / "rllib_checkpoint.json").read_text())
    assert meta[META_FORMAT_VERSION] == 1
    meta[META_FORMAT_VERSION] = 99
    (copy / "rllib_checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatchError, match="format version 99"):
        KFCPO.from_checkpoint(str(copy))


def test_checkpoints_without_version_metadata_are_judged_by_their_class(checkpoints,
                                                                      tmp_path):
    """Checkpoints written before the format version existed stay restorable by their own
    algorithm (and are still refused by another one)."""
    import shutil

    legacy = {}
    for name, path in checkpoints.items():
        copy = tmp_path / name
        shutil.copytree(path, copy)
        meta = json.loads((copy / "rllib_checkpoint.json").read_text())
        meta.pop("rllib_kfcpo_algorithm")
        meta.pop(META_FORMAT_VERSION)
        (copy / "rllib_checkpoint.json").write_text(json.dumps(meta))
        legacy[name] = copy
    with pytest.raises(CheckpointMismatchError, match="written by PPOLag, not KFCPO"):
        KFCPO.from_checkpoint(str(legacy["PPOLag"]))
    restored = KFCPO.from_checkpoint(str(legacy["KFCPO"]))
    restored.stop()


def test_learner_state_of_another_algorithm_is_refused(checkpoints):
    """The learner-level guard (LearnerGroup.restore_from_path / set_state)."""
    import pickle

    from rllib_kfcpo.envs.toy import ActionCostEnv

    state_file = next((checkpoints["PPOLag"] / "learner_group" / "learner").glob("state.pkl"))
    ppolag_state = pickle.loads(state_file.read_bytes())
    assert ppolag_state[COMPONENT_SAFE_STATE]["learner_class"] == "PPOLagTorchLearner"
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    learner = tiny().build_learner(spaces=spaces)
    with pytest.raises(LearnerStateMismatchError, match="written by PPOLagTorchLearner"):
        learner.set_state(ppolag_state)
    kfcpo_state = learner.get_state()
    kfcpo_state[COMPONENT_SAFE_STATE]["format_version"] = 0
    with pytest.raises(LearnerStateMismatchError, match="format version 0"):
        learner.set_state(kfcpo_state)


@pytest.mark.parametrize("config_cls,name,value", [
    (KFCPOConfig, "clip_param", 0.05),
    (KFCPOConfig, "entropy_coeff", 0.5),
    (KFCPOConfig, "use_kl_loss", True),
    (KFCPOConfig, "vf_clip_param", 1.0),
    (KFCPOConfig, "kl_coeff", 0.5),
    (KFCPOConfig, "grad_clip_by", "value"),
    (PPOLagConfig, "use_kl_loss", True),
    (PPOLagConfig, "vf_clip_param", 1.0),
    (PPOLagConfig, "use_gae", False),
])
def test_inherited_setting_the_algorithm_ignores_is_refused(config_cls, name, value):
    """Issue 13: an inherited PPO setting the algorithm does not read is one refusal naming
    it, instead of validating and then doing nothing."""
    config = config_cls().environment(ACTION_COST_ENV).training(**{name: value})
    with pytest.raises(ValueError) as err:
        config.validate()
    first = str(err.value).splitlines()[0]
    assert f"training({name}={value!r}) is not used by" in first
    assert "Remove it" in first


def test_used_inherited_settings_are_accepted():
    KFCPOConfig().environment(ACTION_COST_ENV).training(lr=1e-3, grad_clip=5.0).validate()
    PPOLagConfig().environment(ACTION_COST_ENV).training(clip_param=0.1,
                                                        entropy_coeff=0.01).validate()


def test_every_kfcpo_setting_has_one_rule_and_booleans_are_not_numbers():
    from rllib_kfcpo.algorithms.kfcpo.kfcpo import KFCPO_RULES, KFCPO_SETTINGS

    assert sorted(r.name for r in KFCPO_RULES) == sorted(KFCPO_SETTINGS)
    for name in ("kfac_damping", "trust_region_kl", "target_kl", "kfac_decay"):
        config = KFCPOConfig().environment(ACTION_COST_ENV).training(**{name: True})
        with pytest.raises(ValueError, match=rf"training\({name}=True\) is invalid"):
            config.validate()
