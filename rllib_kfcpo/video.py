"""``rllib evaluate CHECKPOINT --video out.mp4``: see the agent.

The checkpoint is rolled out exactly as :func:`rllib_kfcpo.evaluation.evaluate_checkpoint`
rolls it out (same env runner, seed and deterministic policy: rendering consumes no
random numbers, so returns and costs are those of a plain ``rllib evaluate``), with the
env built in ``rgb_array`` render mode. Every frame (the reset state of each episode, then
one per step) gets a small overlay drawn with a built-in bitmap font: the episode, the
step, the return and the cost so far, and the cost limit. All episodes go into ONE MP4,
one after the other, the last frame of each held for half a second.

Rendering is headless, through MuJoCo's EGL or OSMesa backend
(:func:`rllib_kfcpo.gl_backend.select_gl_backend`);
the MP4 is written by imageio's ffmpeg plugin (``pip install 'rllib-kfcpo[video]'``, which
brings ``imageio-ffmpeg`` and its bundled ffmpeg binary). Every problem that can be seen
before the rollout (path, writer, backend, env) is one :class:`VideoError` line, and the
file is written to a temporary name in the same folder and renamed only when complete, so
a failed run leaves no file behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Default frame size (width, height) and seconds the last frame of an episode is held.
DEFAULT_SIZE = (256, 256)
HOLD_SECONDS = 0.5
#: The camera of navigation tasks (Goal, Button, Push, Circle): it follows the agent.
#: Velocity tasks use their env's own default camera.
NAVIGATION_CAMERA = "track"

PIP_VIDEO = "pip install 'rllib-kfcpo[video]'  (or: pip install imageio-ffmpeg)"


class VideoError(RuntimeError):
    """A ``--video`` problem, said in one line with its fix."""


# --- arguments ---------------------------------------------------------------------------
def check_video_path(path: str | Path) -> Path:
    """The output path, if it can be written: an ``.mp4`` name in an existing folder."""
    out = Path(path)
    if out.suffix.lower() != ".mp4":
        raise VideoError(f"--video {str(path)!r}: the file name must end in .mp4 "
                         "(one MP4 holds every episode).")
    if out.is_dir():
        raise VideoError(f"--video {str(path)!r} is a directory; give a file name, "
                         f"e.g. {str(out / 'agent.mp4')!r}.")
    if not out.parent.is_dir():
        raise VideoError(f"--video {str(path)!r}: the folder {str(out.parent)!r} does not "
                         "exist; create it first.")
    if not os.access(out.parent, os.W_OK):
        raise VideoError(f"--video {str(path)!r}: the folder {str(out.parent)!r} is not "
                         "writable.")
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``: even numbers from 16 to 4096 (the MP4 codec needs even)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VideoError(f"--video-size {text!r}: give WIDTHxHEIGHT, e.g. 256x256.") from None
    for value in (width, height):
        if not 16 <= value <= 4096 or value % 2:
            raise VideoError(f"--video-size {text!r}: width and height must be even numbers "
                             "from 16 to 4096 (the MP4 codec needs even sizes).")
    return width, height


def require_mp4_writer() -> None:
    """Raises :class:`VideoError` with the pip command when imageio-ffmpeg is missing."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        raise VideoError(f"--video writes MP4 with imageio-ffmpeg, which is not installed: "
                         f"{PIP_VIDEO}.") from None
    except RuntimeError as err:  # installed but its ffmpeg binary is missing
        raise VideoError(f"--video: imageio-ffmpeg has no usable ffmpeg binary ({err}); "
                         f"reinstall it: {PIP_VIDEO}.") from None


# --- the overlay -------------------------------------------------------------------------
# A 5x7 bitmap font: just the characters the overlay writes ('?' for any other).
_GLYPH_ROWS: dict[str, tuple[str, ...]] = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    ".": ("     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "),
    "-": ("     ", "     ", "     ", "#####", "     ", "     ", "     "),
    "/": ("     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     "),
    ":": ("     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "),
    " ": ("     ",) * 7,
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "C": (" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "I": (" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "L": ("#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"),
    "M": ("#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"),
    "N": ("#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "P": ("#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "?": (" ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  "),
}
GLYPHS: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows]) for ch, rows in _GLYPH_ROWS.items()
}
GLYPH_W, GLYPH_H = 5, 7


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """A boolean mask of ``text`` (upper-cased) in the bitmap font, 1 column between
    characters, each font pixel ``scale`` x ``scale`` pixels."""
    chars = [GLYPHS.get(ch, GLYPHS["?"]) for ch in text.upper()]
    gap = np.zeros((GLYPH_H, 1), bool)
    row = np.concatenate([part for g in chars for part in (g, gap)][:-1] or [gap], axis=1)
    return np.kron(row, np.ones((scale, scale), bool))


def draw_text(frame: np.ndarray, lines: list[str], scale: int | None = None) -> np.ndarray:
    """``lines`` written top left on a darkened band of a copy of ``frame`` (H, W, 3)
    uint8, in white; clipped at the frame's edge."""
    out = frame.copy()
    height, width = out.shape[:2]
    scale = scale or max(1, width // 160)
    pad, line_h = 2 * scale, (GLYPH_H + 3) * scale
    masks = [text_mask(line, scale) for line in lines]
    band_h = min(height, pad + line_h * len(lines))
    band_w = min(width, 2 * pad + max((m.shape[1] for m in masks), default=0))
    out[:band_h, :band_w] = (out[:band_h, :band_w] * 0.35).astype(np.uint8)
    for i, mask in enumerate(masks):
        top = pad + i * line_h
        if top >= height:
            break
        m = mask[:height - top, :max(0, width - pad)]
        out[top:top + m.shape[0], pad:pad + m.shape[1]][m] = 255
    return out


def overlay_lines(episode: int, episodes: int, step: int, ret: float, cost: float,
                  cost_limit: float) -> list[str]:
    """The overlay text of one frame."""
    limit = f" / {cost_limit:g}" if math.isfinite(cost_limit) else ""
    return [f"EP {episode}/{episodes}  STEP {step}", f"RETURN {ret:.2f}",
            f"COST {cost:.2f}{limit}"]


# --- recording ---------------------------------------------------------------------------
@dataclass
class FrameRecorder:
    """RLlib ``on_episode_start`` / ``on_episode_step`` callbacks that render the env of
    the (local, sync-vectorized) env runner and append overlaid frames to an MP4 writer.

    The writer is opened at the first frame, by ``open_writer(fps)``, with the env's
    ``render_fps``.
    """

    open_writer: Callable[[float], Any]
    episodes: int
    cost_limit: float
    camera: str | None = None
    writer: Any = None
    fps: float = 30.0
    frames: int = 0
    _index: dict[str, int] = field(default_factory=dict)
    _totals: dict[str, list[float]] = field(default_factory=dict)
    _last: np.ndarray | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> FrameRecorder:
        # RLlib deep-copies the config (and so these bound callbacks) when it builds the
        # env runner: every copy must write into this one recorder and its one file.
        return self

    def _frame(self, episode: Any, env_runner: Any, env_index: int) -> None:
        env = env_runner.env.unwrapped.envs[env_index]
        if self.writer is None:
            check_camera(env, self.camera)
            self.fps = float(env.metadata.get("render_fps") or 30)
            self.writer = self.open_writer(self.fps)
        key = episode.id_
        if key not in self._index:
            self._hold()  # the previous episode's last frame
            self._index[key] = len(self._index) + 1
            self._totals[key] = [0.0, 0.0]
        else:
            self._totals[key][0] += float(episode.get_rewards(-1))
            self._totals[key][1] += float(episode.get_infos(-1).get("cost", 0.0))
        try:
            image = env.render()
        except Exception as err:  # noqa: BLE001 - any env's failure, said in one line
            raise VideoError(f"--video: the env cannot render: {type(err).__name__}: "
                             f"{err}") from err
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
            raise VideoError(f"--video: the env's render() returned "
                             f"{type(image).__name__}, not an RGB image.")
        ret, cost = self._totals[key]
        text = overlay_lines(self._index[key], self.episodes, len(episode), ret, cost,
                             self.cost_limit)
        self._last = draw_text(np.ascontiguousarray(image, dtype=np.uint8), text)
        self._write(self._last)

    def _hold(self) -> None:
        if self._last is not None:
            for _ in range(round(HOLD_SECONDS * self.fps)):
                self._write(self._last)

    def _write(self, frame: np.ndarray) -> None:
        self.writer.append_data(frame)
        self.frames += 1

    def on_episode_start(self, *, episode: Any, env_runner: Any, env_index: int,
                         **_: Any) -> None:
        """The reset frame of an episode."""
        self._frame(episode, env_runner, env_index)

    def on_episode_step(self, *, episode: Any, env_runner: Any, env_index: int,
                        **_: Any) -> None:
        """The frame after each step."""
        self._frame(episode, env_runner, env_index)

    def finish(self) -> None:
        """Holds the last frame of the last episode and closes the writer."""
        self._hold()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        """Closes the writer (a failed run); the caller removes the file."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - already failing; the cause is raised
                pass
            self.writer = None


def check_camera(env: Any, camera: str | None) -> None:
    """Raises :class:`VideoError` if ``camera`` is not a camera of the env's MuJoCo model
    (MuJoCo would silently render from its free camera instead)."""
    import mujoco

    unwrapped = env.unwrapped
    model = getattr(unwrapped, "model", None)
    if model is None:  # navigation tasks keep the model in their task
        model = getattr(getattr(unwrapped, "task", None), "model", None)
    if camera is None or model is None:
        return
    if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
        names = sorted(model.camera(i).name for i in range(model.ncam))
        raise VideoError(f"--camera {camera!r} is not a camera of this env; its cameras: "
                         f"{', '.join(names)}.")


def _add_callback(config: Any, which: str, fn: Callable[..., None]) -> None:
    attr = f"callbacks_{which}"
    existing = getattr(config, attr, None)
    if existing is None:
        fns = [fn]
    elif isinstance(existing, (list, tuple)):
        fns = [*existing, fn]
    else:
        fns = [existing, fn]
    config.callbacks(**{which: fns})


def render_env_config(env_id: str, size: tuple[int, int], camera: str | None) -> dict[str, Any]:
    """The env_config keys that make a Safety-Gymnasium task render ``size`` RGB frames."""
    from rllib_kfcpo.envs import safety_task_ids

    if env_id not in safety_task_ids():
        raise VideoError(f"--video renders Safety-Gymnasium tasks; the checkpoint's env "
                         f"{env_id!r} is not one (see rllib_kfcpo.envs.safety_task_ids()).")
    if camera is None and "Velocity" not in env_id:
        camera = NAVIGATION_CAMERA
    keys: dict[str, Any] = {"render_mode": "rgb_array", "width": size[0], "height": size[1]}
    if camera is not None:
        keys["camera_name"] = camera
    return keys


def record_video(checkpoint: str | Path, out: str | Path, *, episodes: int = 1, seed: int = 0,
                 size: tuple[int, int] = DEFAULT_SIZE, camera: str | None = None,
                 explore: bool = False) -> dict[str, Any]:
    """Rolls out ``checkpoint`` like :func:`~rllib_kfcpo.evaluation.evaluate_checkpoint`
    and writes every episode, rendered headless with an overlay, into the MP4 ``out``.

    Returns the evaluation report plus ``video`` (the path), ``video_frames``, ``fps``,
    ``gl_backend`` and ``camera``. Raises :class:`VideoError` (one line) for a bad path, a
    missing imageio-ffmpeg, no headless backend, or an env that cannot render; then no
    file is written.
    """
    from rllib_kfcpo.evaluation import evaluate_checkpoint
    from rllib_kfcpo.gl_backend import GLBackendError, select_gl_backend

    if episodes <= 0:
        raise VideoError(f"--episodes {episodes}: give a positive number of episodes.")
    out = check_video_path(out)
    require_mp4_writer()
    try:
        backend = select_gl_backend()
    except GLBackendError as err:
        raise VideoError(f"--video: {err}") from None
    import imageio.v2 as imageio

    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial.mp4")
    recorders: list[FrameRecorder] = []
    cameras: list[str | None] = []

    def open_writer(fps: float) -> Any:
        return imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                  quality=7, macro_block_size=1, ffmpeg_log_level="error")

    def configure(config: Any) -> None:
        render = render_env_config(str(config.env), size, camera)
        config.environment(env_config={**dict(config.env_config or {}), **render})
        config.env_runners(gym_env_vectorize_mode="sync")
        recorder = FrameRecorder(open_writer=open_writer, episodes=episodes,
                                 cost_limit=float(getattr(config, "cost_limit", math.nan)),
                                 camera=render.get("camera_name"))
        recorders.append(recorder)
        cameras.append(render.get("camera_name"))
        _add_callback(config, "on_episode_start", recorder.on_episode_start)
        _add_callback(config, "on_episode_step", recorder.on_episode_step)

    try:
        report = evaluate_checkpoint(checkpoint, episodes=episodes, seed=seed, explore=explore,
                                     configure=configure)
        recorder = recorders[0]
        recorder.finish()
        os.replace(tmp, out)
    finally:
        for rec in recorders:
            rec.abort()
        tmp.unlink(missing_ok=True)
    return {**report, "video": str(out), "video_frames": recorder.frames, "fps": recorder.fps,
            "gl_backend": backend, "camera": cameras[0]}
