"""`rllib evaluate CHECKPOINT --video out.mp4`: a real checkpoint on SafetyPointGoal1-v0,
rendered headless (EGL here, from the machine image's libegl1/libegl-mesa0), written as
an MP4 that is read back; and every refusal as one line with no file left behind.

The rendering tests are skipped, with the reason, only where no headless backend works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rllib_kfcpo.cli.main import main
from rllib_kfcpo.gl_backend import GLBackendError, missing_library, select_gl_backend
from rllib_kfcpo.video import (
    GLYPHS,
    HOLD_SECONDS,
    VideoError,
    check_camera,
    draw_text,
    overlay_lines,
    render_env_config,
)
from tests.cli.test_cli_end_to_end import ROOT

ENV = "SafetyPointGoal1-v0"
STEPS = 20  # max_episode_steps of the checkpoint's env
EPISODES = 2
FPS = 30  # navigation tasks' render_fps


@pytest.fixture(scope="module")
def checkpoint(ray_local, tmp_path_factory) -> Path:
    """A real PPOLag checkpoint on SafetyPointGoal1-v0 (20-step episodes), one iteration."""
    from rllib_kfcpo import PPOLagConfig

    config = (
        PPOLagConfig()
        .environment(ENV, env_config={"max_episode_steps": STEPS})
        .env_runners(num_env_runners=0, rollout_fragment_length=2 * STEPS)
        .training(train_batch_size=2 * STEPS, minibatch_size=STEPS, num_epochs=1,
                  cost_limit=5.0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        algo.train()
        return Path(algo.save_to_path(str(tmp_path_factory.mktemp("video") / "ckpt")))
    finally:
        algo.stop()


@pytest.fixture
def keep_mujoco_gl():
    """Restores MUJOCO_GL after a test (select_gl_backend sets it for this process)."""
    saved = os.environ.get("MUJOCO_GL")
    yield
    if saved is None:
        os.environ.pop("MUJOCO_GL", None)
    else:
        os.environ["MUJOCO_GL"] = saved


@pytest.fixture
def gl_backend(keep_mujoco_gl) -> str:
    try:
        return select_gl_backend()
    except GLBackendError as err:
        pytest.skip(f"no headless OpenGL backend on this machine: {err}")


def _report(out: str) -> dict:
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def test_video_is_decodable_and_matches_plain_evaluate(checkpoint, gl_backend, tmp_path,
                                                       capsys):
    import imageio.v2 as imageio

    argv = ["evaluate", str(checkpoint), "--episodes", str(EPISODES), "--seed", "3"]
    assert main(argv) == 0
    plain = _report(capsys.readouterr().out)

    out = tmp_path / "agent.mp4"
    assert main([*argv, "--video", str(out), "--video-size", "64x48"]) == 0
    printed = capsys.readouterr().out
    video = _report(printed)
    # The same rollout: rendering changes no return or cost.
    assert video["episode_returns"] == plain["episode_returns"]
    assert video["episode_costs"] == plain["episode_costs"]
    assert video["video"] == str(out) and video["gl_backend"] == gl_backend
    assert video["camera"] == "track"
    line = next(ln for ln in printed.splitlines() if ln.startswith("video: "))
    assert str(out) in line
    for i, (ret, cost) in enumerate(zip(plain["episode_returns"], plain["episode_costs"],
                                        strict=True), start=1):
        assert f"episode {i}: return {ret:.2f}, cost {cost:.2f}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.mp4"]  # no partial file

    # Read back: each episode's reset frame and one per step, its last frame held.
    reader = imageio.get_reader(out, format="FFMPEG")
    try:
        assert reader.get_meta_data()["fps"] == FPS
        # iter_data, not list(reader): the reader's len() is inf for ffmpeg streams.
        frames = np.stack(list(reader.iter_data()))
    finally:
        reader.close()
    hold = round(HOLD_SECONDS * FPS)
    assert frames.shape == (EPISODES * (STEPS + 1 + hold), 48, 64, 3)
    assert video["video_frames"] == len(frames)
    ep1, ep2 = frames[0], frames[STEPS + 1 + hold]  # the two reset frames
    assert np.abs(ep1.astype(int) - ep2).mean() > 1.0  # a new layout
    assert len({f.tobytes() for f in frames}) > EPISODES * STEPS // 2
    # The overlay band (top left) is dark with white text; the scene below it is not.
    band = frames[:, :30, :40]
    assert (band > 200).any(axis=-1).mean() > 0.05
    assert frames[:, 36:].mean() > band.mean()


def test_missing_backend_is_one_line_and_writes_nothing(checkpoint, tmp_path):
    """The real `rllib` process with MUJOCO_GL=osmesa where libOSMesa is absent.

    It also shows that the package imports with such a MUJOCO_GL (mujoco 4 alone fails
    `import mujoco` there; see rllib_kfcpo.gl_backend) and keeps it for the message.
    """
    if missing_library("osmesa") is None:
        pytest.skip("libOSMesa is installed here, so MUJOCO_GL=osmesa is not missing")
    out = tmp_path / "agent.mp4"
    env = {**os.environ, "MUJOCO_GL": "osmesa", "RAY_ADDRESS": "local"}
    proc = subprocess.run([sys.executable, "-m", "rllib_kfcpo.cli.main", "evaluate",
                           str(checkpoint), "--video", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rllib: error: --video: MUJOCO_GL=osmesa cannot render here")
    assert "apt-get install libosmesa6" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("video, size, expected", [
    ("agent.avi", "64x48", "must end in .mp4"),
    ("missing/agent.mp4", "64x48", "does not exist; create it first"),
    ("adir.mp4", "64x48", "is a directory"),
    ("agent.mp4", "63x48", "even numbers"),
    ("agent.mp4", "big", "give WIDTHxHEIGHT"),
])
def test_bad_video_arguments_are_one_line(tmp_path, capsys, video, size, expected):
    (tmp_path / "adir.mp4").mkdir()
    ckpt = tmp_path / "ckpt"  # refused before the checkpoint is read
    ckpt.mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert main(["evaluate", str(ckpt), "--video", str(tmp_path / video),
                 "--video-size", size]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert sorted(tmp_path.rglob("*")) == before


def test_missing_mp4_writer_names_the_pip_command(tmp_path, capsys, monkeypatch):
    # None in sys.modules makes `import imageio_ffmpeg` raise ImportError, as if absent.
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert main(["evaluate", str(ckpt), "--video", str(tmp_path / "a.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'rllib-kfcpo[video]'" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_env_that_cannot_render_is_refused():
    from rllib_kfcpo.envs.toy import ACTION_COST_ENV

    with pytest.raises(VideoError, match="renders Safety-Gymnasium tasks"):
        render_env_config(ACTION_COST_ENV, (64, 64), None)
    assert render_env_config(ENV, (64, 48), None) == {
        "render_mode": "rgb_array", "width": 64, "height": 48, "camera_name": "track"}
    assert "camera_name" not in render_env_config("SafetyHalfCheetahVelocity-v1",
                                                  (64, 48), None)


def test_unknown_camera_is_refused_with_the_env_cameras():
    from rllib_kfcpo.envs import make_safety_env

    env = make_safety_env(ENV, {"max_episode_steps": 5})
    try:
        env.reset(seed=0)
        check_camera(env, "track")
        check_camera(env, None)
        with pytest.raises(VideoError, match="its cameras: fixedfar, fixednear, track, vision"):
            check_camera(env, "topdown")
    finally:
        env.close()


def test_overlay_font_covers_its_text_and_draws_it():
    for lines in (overlay_lines(1, 2, 0, 0.0, 0.0, 25.0),
                  overlay_lines(10, 10, 1000, -123.456, 78.9, float("nan")),
                  overlay_lines(3, 5, 7, float("inf"), 1.0, 5.0)):
        for line in lines:
            assert set(line.upper()) <= set(GLYPHS), line
    frame = np.full((48, 64, 3), 100, np.uint8)
    drawn = draw_text(frame, ["EP 1/2"])
    assert (drawn == 255).all(axis=-1).any() and not (frame == 255).any()
    assert (drawn[:, :, 0] < 100).any()  # the darkened band
    assert (drawn[-5:] == frame[-5:]).all()  # below the band: untouched
    big = draw_text(np.zeros((16, 16, 3), np.uint8), ["RETURN -123.45"] * 3)  # clipped
    assert big.shape == (16, 16, 3)
