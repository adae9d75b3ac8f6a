"""Issue 14, a newcomer's first hour: defaults that fit the machine, and a quiet run.

Three real `rllib train` runs through the console script, each on a fresh local Ray
instance that sees this machine's CPUs: the README's one-liner on SafetyPointGoal1-v0 (one
iteration of 200 env steps) with no layout given, `make demo`'s command as the Makefile
writes it (with `--smoke`: two tiny iterations), and a user's own env that warns. Then
explicit layouts that do not fit, refused with an override that does, and the layout
arithmetic on fixed CPU/GPU counts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rllib_kfcpo.cli.experiment import build_algorithm_config
from rllib_kfcpo.cli.layout import (
    fit_layout,
    fitting_override,
    layout_line,
    user_layout_keys,
)
from rllib_kfcpo.cli.main import main
from rllib_kfcpo.envs.toy import ACTION_COST_ENV
from tests.cli.test_cli_end_to_end import ROOT, rllib_command

USER_ENVS = Path(__file__).with_name("user_envs")
TINY = {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1}
#: Known-harmless notices that a plain run printed before (each from another process or
#: library); none may show without --verbose.
NOISE = (
    "on the new API stack!",
    "RLModule(config=",
    "Install gputil",
    "overflow encountered in cast",
    "Trainable.setup took",
    "Checkpoint successfully created",
    "Configuration for experiment",
    "View detailed results here",
    "has constructor arguments in the object store",
    "Wrote the latest version of all result files",
    "Token authentication is enabled for this Ray cluster",
)


def _run(args: list[str], tmp: Path, extra_env: dict[str, str] | None = None,
         timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "local", **(extra_env or {})}
    return subprocess.run([*rllib_command(), *args, "--storage-path", str(tmp)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _ray_cpus() -> int:
    from ray._private.utils import get_num_cpus

    return int(get_num_cpus())


@pytest.fixture(scope="module")
def point_goal_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """`rllib train --algo KFCPO --env SafetyPointGoal1-v0 --stop ...` with a tiny batch."""
    config = {**TINY, "env_config": {"max_episode_steps": 50}}
    return _run(["train", "--algo", "KFCPO", "--env", "SafetyPointGoal1-v0",
                 "--stop", '{"training_iteration": 1}', "--config", json.dumps(config)],
                tmp_path_factory.mktemp("point_goal"))


def test_default_layout_fits_this_machine_and_trains(point_goal_run):
    proc = point_goal_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cpus = _ray_cpus()
    runners = max(0, min(2, cpus - 1))  # PPO's 2 env runners, shrunk to fit
    layout = [line for line in proc.stdout.splitlines() if line.startswith("== layout: ")]
    assert len(layout) == 1, proc.stdout
    expected = (f"{runners} env runner{'s' if runners != 1 else ''}" if runners
                else "sampling in the trial process")
    assert layout[0].startswith(f"== layout: {expected} + learner on CPU in the trial "
                                f"process: {runners + 1} of {cpus} CPUs"), layout[0]
    assert "(chosen to fit;" in layout[0]
    iterations = re.findall(r"^iter +1/1 \(100 %\) \| steps +[\d,]+ \|", proc.stdout,
                            re.MULTILINE)
    assert len(iterations) == 1, proc.stdout
    assert "   checkpoint: " in proc.stdout


def test_a_plain_run_prints_banner_progress_and_summary_only(point_goal_run):
    out = point_goal_run.stdout + point_goal_run.stderr
    shown = [n for n in NOISE if n in out]
    assert not shown, f"known-harmless notices printed: {shown}\n{out[-4000:]}"
    # What is left: the layout, the banner, one line per iteration, the summary (the final
    # line, the course of return and cost, the checkpoint).
    lines = [line for line in point_goal_run.stdout.splitlines() if line.strip()]
    assert [line[:9] for line in lines] == [
        "== layout", "== KFCPO-", "iter    1", "== KFCPO-", "   final:", "   course",
        "   checkp"], lines
    assert point_goal_run.stderr.strip() == "", point_goal_run.stderr[-3000:]


def make_demo_argv(storage: Path) -> list[str]:
    """The command of the Makefile's `demo` recipe, with its variables filled in."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (recipe,) = re.findall(r"^demo:.*\n\t(.+)$", text, re.MULTILINE)
    recipe = recipe.replace("$(PY)", sys.executable).replace("$(CURDIR)/results", str(storage))
    return shlex.split(recipe)


def test_make_demo_runs_the_demo_yaml_prints_the_course_and_writes_the_png(tmp_path):
    """`make demo`'s command (KFCPO on PointGoalHazard-v0, then the PNG), shrunk by
    `--smoke` to two iterations of 200 steps: the same quiet output as any run, the
    course line, and the learning curves. (tests/cli/test_demo_slow.py runs it in full.)"""
    argv = make_demo_argv(tmp_path)
    assert "tuned_examples/kfcpo/demo-point-goal-hazard.yaml" in argv and "--plot" in argv
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.run([*argv, "--smoke", "--stop", '{"training_iteration": 2}'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert [line[:9] for line in lines] == [
        "== layout", "== demo: ", "iter    1", "iter    2", "== demo: ", "   final:",
        "   course", "   checkp", "   learni"], lines
    assert "KFCPO on rllib_kfcpo/PointGoalHazard-v0, cost limit 25" in lines[1]
    assert re.match(r"   course: return \S+ -> \S+, episode cost \S+ -> \S+, Jc \S+ -> \S+ "
                    r"\(Jc (within|over) the limit 25; first iteration -> mean of the last 1\)$",
                    lines[6]), lines[6]
    assert (tmp_path / "demo" / "learning_curves.png").stat().st_size > 10_000
    assert not [n for n in NOISE if n in proc.stdout + proc.stderr]


def test_user_warnings_still_reach_the_terminal(tmp_path):
    """A user's env warns (warnings.warn) and a library it uses logs a warning: both show,
    from the Ray worker that runs the env, while Ray's own notices stay filtered."""
    from tests.cli.user_envs.user_warning_env import LIBRARY_WARNING, USER_WARNING

    path = os.pathsep.join(filter(None, [str(USER_ENVS), os.environ.get("PYTHONPATH")]))
    proc = _run(["train", "--algo", "PPOLag", "--env", "user_warning_env:UserWarningCost-v0",
                 "--stop", '{"training_iteration": 1}', "--config", json.dumps(TINY)],
                tmp_path, extra_env={"PYTHONPATH": path})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for message in (USER_WARNING, LIBRARY_WARNING):
        assert message in out, out[-4000:]
        # ... also from the worker that built the env for the trial (a "pid=" prefix).
        assert any(message in line and "pid=" in line for line in out.splitlines()), \
            out[-4000:]
    assert not [n for n in NOISE if n in out], out[-4000:]


def test_verbose_shows_the_notices(tmp_path):
    """`--verbose` filters nothing (here: RLlib's new-API-stack notice, logged while the
    config is checked, before the run is refused for having nothing to resume)."""
    args = ["train", "--algo", "KFCPO", "--env", ACTION_COST_ENV, "--resume"]
    verbose = _run([*args, "--verbose"], tmp_path, timeout=120)
    plain = _run(args, tmp_path, timeout=120)
    assert verbose.returncode == plain.returncode == 2
    assert "Nothing to resume" in verbose.stderr and "Nothing to resume" in plain.stderr
    assert "You are running KFCPO on the new API stack!" in verbose.stderr
    assert "on the new API stack!" not in plain.stderr


def test_explicit_layout_that_does_not_fit_is_refused_with_a_fitting_override(
        ray_local, capsys, tmp_path):
    """The session's Ray has 4 CPUs: 8 env runners + the trial do not fit; 3 do."""
    code = main(["train", "--algo", "KFCPO", "--env", ACTION_COST_ENV, "--storage-path",
                 str(tmp_path), "--config", json.dumps({**TINY, "num_env_runners": 8})])
    err = capsys.readouterr().err
    assert code == 2
    assert "need 9 CPUs" in err and "the Ray cluster has 4" in err
    assert """This fits: --config '{"num_env_runners": 3}'""" in err
    assert not list(tmp_path.rglob("progress.csv"))  # no trial started
    # Learners too: 4 learner actors + the trial need 5 (the env runners, not given, were
    # already shrunk to 0); 3 learners fit.
    code = main(["train", "--algo", "KFCPO", "--env", ACTION_COST_ENV, "--storage-path",
                 str(tmp_path), "--config", json.dumps({**TINY, "num_learners": 4,
                                                      "train_batch_size": 1600})])
    err = capsys.readouterr().err
    assert code == 2
    assert "num_env_runners=0) need 5 CPUs" in err
    assert """This fits: --config '{"num_learners": 3}'""" in err


def _config(**overrides):
    return build_algorithm_config("KFCPO", ACTION_COST_ENV, {**TINY, **overrides})


@pytest.mark.parametrize("cpus,gpus,runners,gpu", [
    (1, 0, 0, 0), (2, 0, 1, 0), (3, 0, 2, 0), (16, 0, 2, 0), (2, 1, 1, 1), (8, 4, 2, 1),
])
def test_default_layout_arithmetic(cpus, gpus, runners, gpu):
    config = _config()
    changed = fit_layout(config, user_layout_keys(config, TINY), cpus, gpus)
    assert (config.num_env_runners, config.num_learners) == (runners, 0)
    assert config.num_gpus_per_learner == gpu
    assert changed == (runners != 2 or gpu != 0)
    assert fitting_override(config, cpus, gpus) == {}  # the chosen layout fits


@pytest.mark.parametrize("trials,gpus,gpu", [(1, 1, 1), (3, 1, 0), (3, 2, 0), (3, 4, 1)])
def test_gpu_learners_only_when_every_trial_gets_one(trials, gpus, gpu):
    """Seen on a 1-GPU, 16-core machine: 3 seeds with a GPU learner each ran one at a
    time. With fewer GPUs than trials the learners stay on CPU and the seeds run at once."""
    config = _config()
    fit_layout(config, user_layout_keys(config, TINY), 16, gpus, trials=trials)
    assert config.num_gpus_per_learner == gpu and config.num_learners == 0
    line = layout_line(config, 16, gpus, True, trials)
    assert ("learner on 1 GPU" if gpu else "learner on CPU") in line
    assert (f"per trial, {trials} trials" in line) == (trials > 1)


def test_user_layout_keys_are_kept():
    config = _config(num_env_runners=4, num_gpus_per_learner=0)
    keys = user_layout_keys(config, {"num_env_runners": 4, "num_gpus_per_learner": 0})
    assert keys == {"num_env_runners", "num_gpus_per_learner"}
    assert fit_layout(config, keys, cpus=2, gpus=1) is False
    assert config.num_env_runners == 4 and config.num_gpus_per_learner == 0
    assert fitting_override(config, 2, 1) == {"num_env_runners": 1}
    # A GPU learner on a machine without one: train on CPU instead.
    config = _config(num_gpus_per_learner=1)
    assert fitting_override(config, 4, 0) == {"num_gpus_per_learner": 0.0}


def test_only_the_known_teardown_report_is_dropped():
    """Ray's SIGTERM makes RLlib's LearnerGroup.__del__ (Tune stopping a trial early) or
    EnvRunner.__del__ (env runners torn down at the end of a run) raise SystemExit, which
    Python reports as "Exception ignored in"; those reports alone are dropped."""
    import sys

    code = (
        "from rllib_kfcpo.cli.quiet import quiet\n"
        "quiet()\n"
        "class LearnerGroup:\n"
        "    def __del__(self): raise SystemExit(1)\n"
        "class EnvRunner:\n"
        "    def __del__(self): raise SystemExit(1)\n"
        "class UserThing:\n"
        "    def __del__(self): raise SystemExit(2)\n"
        "LearnerGroup(); EnvRunner(); UserThing()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "LearnerGroup.__del__" not in proc.stderr
    assert "EnvRunner.__del__" not in proc.stderr
    assert "Exception ignored in: <function UserThing.__del__" in proc.stderr
    assert "SystemExit: 2" in proc.stderr
