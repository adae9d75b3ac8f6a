"""Fast reset of Safety-Gymnasium navigation tasks: keep the compiled MuJoCo model.

Every navigation reset samples a new layout and ``World.build`` compiles a fresh MuJoCo
model from the generated XML. Almost all of that compile is decoding the six HD skybox
PNGs (``star_hd.*.png``, 3259x3259 each, ~191 MB of texture): about 0.25 s on an idle
core, versus about 1 ms for the same XML with a 1x1 skybox. The skybox never changes
between layouts; only positions, orientations and the quantities the compiler derives
from them (``qpos0``, weld ``eq_data``, inertial frames, ``stat``, ...) do.

With ``reuse_compiled_model`` on (the default for navigation tasks; see
:func:`rllib_kfcpo.envs.make_safety_env`), every
rebuild after the first compiles the SAME generated XML with the skybox swapped for a 1x1
builtin one, and copies every model array and statistic (all but the texture arrays)
into the already compiled full model, which is then used exactly as a freshly compiled
one would be (new ``MjData``, ``mj_forward``). The layout is sampled by safety_gymnasium's
own code and RNG, unchanged, so layouts stay random per episode and a seed gives the same
episodes; ``tests/envs/test_reset_speed.py`` checks that the grafted model equals a fresh
full compile array for array, and that trajectories are identical with and without the
option. When the cheap model's structure does not match (a different number of bodies,
geoms, ...), or there is no skybox to swap, it falls back to the full compile.

The hook is the single call in ``safety_gymnasium/world.py`` that compiles the model; the
source fix ``R`` in :mod:`rllib_kfcpo.envs.compat` routes it through
:func:`compile_world_model`, which is a plain ``MjModel.from_xml_string`` unless the
world's ``reuse_compiled_model`` attribute is true.
"""

from __future__ import annotations

import copy
import re
from typing import IO, Any

import mujoco
import numpy as np

#: The attribute of a safety_gymnasium ``World`` that turns the reuse on.
REUSE_ATTRIBUTE = "reuse_compiled_model"

_SKYBOX = re.compile(r'<texture type="skybox"[^>]*?(?:/>|>\s*</texture>)')
_TINY_SKYBOX = '<texture type="skybox" builtin="flat" width="1" height="1" rgb1="0 0 0"/>'
_STAT_FIELDS = ("center", "extent", "meaninertia", "meanmass", "meansize")

#: Model arrays that are not copied: the textures (the reason to keep the model) and the
#: file paths (the cheap model names no skybox files).
_SKIP = re.compile(r"^(tex_.*|paths|.*_pathadr|ntex.*)$")

_stats = {"grafted": 0, "compiled": 0}


def _arrays(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    out = {}
    for name in dir(model):
        if name.startswith("_") or _SKIP.match(name):
            continue
        try:
            value = getattr(model, name)
        except Exception:  # noqa: BLE001 - some properties raise on unused features
            continue
        if isinstance(value, np.ndarray):
            out[name] = value
    return out


def graft(target: mujoco.MjModel, source: mujoco.MjModel) -> bool:
    """Copies every non-texture array and ``stat`` of ``source`` into ``target``.

    Returns False (and changes nothing) when any copied array's shape differs, i.e. the
    two models do not have the same structure.
    """
    pairs = []
    source_arrays = _arrays(source)
    for name, dst in _arrays(target).items():
        src = source_arrays.get(name)
        if src is None or src.shape != dst.shape or src.dtype != dst.dtype:
            return False
        pairs.append((dst, src))
    for dst, src in pairs:
        np.copyto(dst, src)
    for field in _STAT_FIELDS:
        setattr(target.stat, field, getattr(source.stat, field))
    return True


def compile_world_model(world: Any, xml: str) -> mujoco.MjModel:
    """The model ``World.build`` compiles from ``xml`` (see module docstring)."""
    current = world.engine.model if getattr(world, "engine", None) is not None else None
    if getattr(world, REUSE_ATTRIBUTE, False) and current is not None:
        light_xml, swapped = _SKYBOX.subn(_TINY_SKYBOX, xml, count=1)
        if swapped and graft(current, mujoco.MjModel.from_xml_string(light_xml)):
            _stats["grafted"] += 1
            return current
    _stats["compiled"] += 1
    return mujoco.MjModel.from_xml_string(xml)


_ASSETS: dict[str, Any] = {}


def load_assets_config(world: Any, file: IO[str]) -> Any:
    """``yaml.load(file, Loader=yaml.FullLoader)`` of ``World.build`` (the assets config).

    With the reuse on, the file is parsed once per process and every build gets a deep
    copy of that parse (the same nested dicts a fresh parse gives): parsing it was ~60 %
    of a reset once the compile is cheap.
    """
    import yaml

    if not getattr(world, REUSE_ATTRIBUTE, False):
        return yaml.load(file, Loader=yaml.FullLoader)  # noqa: S506 - upstream's call
    key = getattr(file, "name", None)
    if key not in _ASSETS:
        _ASSETS[key] = yaml.load(file, Loader=yaml.FullLoader)  # noqa: S506
    return copy.deepcopy(_ASSETS[key])


def counts() -> dict[str, int]:
    """How many world models this process grafted and fully compiled (for tests)."""
    return dict(_stats)
