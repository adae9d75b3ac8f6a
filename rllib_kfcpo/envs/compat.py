"""Makes safety-gymnasium 1.0.0 import and run on Python 3.11+, gymnasium 1.x and numpy 2.4.

safety-gymnasium 1.0.0 (the only release) was written for gymnasium 0.28, numpy 1.x and
Python 3.10. On the stack RLlib 2.60 needs, importing it fails (see
``docs/installation.md`` for the full table). We do not edit the installed package:
:func:`import_safety_gymnasium` installs an import hook that rewrites the SOURCE of the
few affected modules as they are loaded. Every fix is a literal (or regex) replacement
that is applied only when its "broken" text is present, so when upstream fixes a line the
fix is silently a no-op, and :func:`applied_fixes` reports which fixes actually fired.

The fixes (letters as in ``docs/installation.md``):

A   gymnasium 1.x moved or removed wrapper modules: imports are redirected to the new
    names (``Autoreset``, ``PassiveEnvChecker``, ``TimeLimit``, ``RunningMeanStd`` in
    ``gymnasium.wrappers.utils``); ``EnvCompatibility`` (gone) becomes ``None``.
A2  gymnasium 1.x ``EnvSpec`` lost ``autoreset``/``apply_api_compatibility``:
    ``safety_gymnasium.make`` reads them with ``getattr(..., False)`` and builds its
    minimal spec without them.
B   Python >= 3.11 dataclasses reject ndarray defaults (``color: np.array = COLOR[...]``):
    they become ``field(default_factory=...)`` returning a fresh (deep) copy.
C   ``OffScreenViewer(model, data, width, height)`` since gymnasium 0.29.
D/E numpy >= 2.4: ``int()``/``float()`` of a size-1, ndim>0 array: index ``[0]`` / use
    ``.item()``.
F   ``Builder``'s EzPickle kwargs omit ``task_id`` (pickle/deepcopy of a live env).
G   the package ``__init__`` imports gymnasium-robotics for the multi-agent ``make_ma``:
    that import becomes lazy, raising a clear ImportError only when ``make_ma`` is called.
S   the agents' action space: float32 bounds in a float64 ``Box`` make gymnasium 1.x
    compare them with float64's range cast to float32, warning "RuntimeWarning: overflow
    encountered in cast" in every process that builds a task. The bounds are widened to
    float64 after the same float32 rounding, so the space is bit-identical and quiet.
R   not a compatibility fix but the hooks of the fast reset: ``World.build``
    compiles its model through :func:`rllib_kfcpo.envs.fast_reset.compile_world_model`,
    which is exactly ``MjModel.from_xml_string`` unless the env was made with
    ``reuse_compiled_model=True`` (see :mod:`rllib_kfcpo.envs.fast_reset`); the same
    option parses ``configs/assets.yaml`` once per process instead of once per reset
    (:func:`rllib_kfcpo.envs.fast_reset.load_assets_config`).

The hook is process-local: Ray workers are fresh interpreters, so every env creator calls
:func:`import_safety_gymnasium` (the creators in :mod:`rllib_kfcpo.envs` do).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import threading
from dataclasses import dataclass
from types import ModuleType

PACKAGE = "safety_gymnasium"


@dataclass(frozen=True)
class SourceFix:
    """One textual fix of one module (or of every module under a package prefix).

    Attributes:
        key: the letter of the problem in docs/installation.md.
        module: a module name, or a prefix ending in ``.`` for all modules below it.
        pattern: the broken text (a regex when ``regex`` is true, else a literal).
        replacement: what replaces it (may use regex groups when ``regex`` is true).
    """

    key: str
    module: str
    pattern: str
    replacement: str
    regex: bool = False

    def matches_module(self, name: str) -> bool:
        """True when this fix is meant for module ``name``."""
        if self.module.endswith("."):
            return name.startswith(self.module)
        return name == self.module

    def apply(self, source: str) -> tuple[str, bool]:
        """``(new source, fired)``; ``fired`` is false when the broken text is absent."""
        if self.regex:
            new, count = re.subn(self.pattern, self.replacement, source, flags=re.MULTILINE)
            return new, count > 0
        if self.pattern not in source:
            return source, False
        return source.replace(self.pattern, self.replacement), True


_GYMNASIUM_MAKE_MA_STUB = '''
def make_ma(*args, **kwargs):
    raise ImportError(
        "safety_gymnasium.make_ma needs gymnasium-robotics, which rllib-kfcpo does not "
        "install (its pins conflict with RLlib). rllib-kfcpo supports the single-agent tasks."
    )
'''

FIXES: tuple[SourceFix, ...] = (
    # A: modules gymnasium 1.x moved or removed.
    SourceFix("A", "safety_gymnasium.utils.registration",
              "from gymnasium.wrappers.compatibility import EnvCompatibility",
              "EnvCompatibility = None  # removed in gymnasium 1.0 (rllib_kfcpo fix A)"),
    SourceFix("A", "safety_gymnasium.wrappers.autoreset",
              "from gymnasium.wrappers.autoreset import AutoResetWrapper",
              "from gymnasium.wrappers import Autoreset as AutoResetWrapper"),
    SourceFix("A", "safety_gymnasium.wrappers.env_checker",
              "from gymnasium.wrappers.env_checker import PassiveEnvChecker",
              "from gymnasium.wrappers import PassiveEnvChecker"),
    SourceFix("A", "safety_gymnasium.wrappers.normalize",
              "from gymnasium.wrappers.normalize import NormalizeObservation, "
              "NormalizeReward, RunningMeanStd",
              "from gymnasium.wrappers import NormalizeObservation, NormalizeReward\n"
              "from gymnasium.wrappers.utils import RunningMeanStd"),
    SourceFix("A", "safety_gymnasium.wrappers.time_limit",
              "from gymnasium.wrappers.time_limit import TimeLimit",
              "from gymnasium.wrappers import TimeLimit"),
    # A2: EnvSpec fields gymnasium 1.x removed.
    SourceFix("A2", "safety_gymnasium.utils.registration",
              r"env_spec\.(apply_api_compatibility|autoreset)\b",
              r"getattr(env_spec, '\1', False)", regex=True),
    SourceFix("A2", "safety_gymnasium.utils.registration",
              r"^\s*(autoreset|apply_api_compatibility)=False,\n", "", regex=True),
    # B: ndarray dataclass defaults (Python >= 3.11).
    SourceFix("B", "safety_gymnasium.assets.",
              r"^(\s+\w+): np\.array = ((?:COLOR|GROUP)\[[^\]\n]+\])\s*$",
              r"\1: np.array = __import__('dataclasses').field("
              r"default_factory=lambda: __import__('copy').deepcopy(\2))",
              regex=True),
    # C: OffScreenViewer needs the size since gymnasium 0.29.
    SourceFix("C", "safety_gymnasium.bases.underlying",
              "self.viewer = OffScreenViewer(self.model, self.data)",
              "self.viewer = OffScreenViewer(self.model, self.data, "
              "self.model.vis.global_.offwidth, self.model.vis.global_.offheight)"),
    # D/E: numpy >= 2.4 refuses int()/float() of ndim>0 arrays.
    SourceFix("D", "safety_gymnasium.bases.base_agent",
              "joint_id = self.engine.model.sensor(sensor_id).objid\n",
              "joint_id = int(self.engine.model.sensor(sensor_id).objid[0])\n"),
    SourceFix("E", "safety_gymnasium.bases.base_agent",
              "theta = float(self.get_sensor(sensor))",
              "theta = __import__('numpy').asarray(self.get_sensor(sensor)).reshape(-1)[0]"
              ".item()"),
    # F: EzPickle kwargs must include task_id to rebuild the env.
    SourceFix("F", "safety_gymnasium.builder",
              "gymnasium.utils.EzPickle.__init__(self, config=config)",
              "gymnasium.utils.EzPickle.__init__(self, task_id=task_id, config=config, "
              "render_mode=render_mode, width=width, height=height, camera_id=camera_id, "
              "camera_name=camera_name)"),
    # S: float32 bounds in a float64 Box (gymnasium warns "overflow encountered in cast").
    SourceFix("S", "safety_gymnasium.bases.base_agent",
              "bounds = self.engine.model.actuator_ctrlrange.copy().astype(np.float32)\n",
              "bounds = self.engine.model.actuator_ctrlrange.copy().astype(np.float32)"
              ".astype(np.float64)  # rllib_kfcpo fix S\n"),
    # R: the compile call, routed through the opt-in fast reset (identity when off).
    SourceFix("R", "safety_gymnasium.world",
              "model = mujoco.MjModel.from_xml_string(self.xml_string)",
              "model = __import__('rllib_kfcpo.envs.fast_reset', fromlist=['_'])"
              ".compile_world_model(self, self.xml_string)"),
    # R: the assets config, parsed once per process when the fast reset is on.
    SourceFix("R", "safety_gymnasium.world",
              "assets_config = yaml.load(file, Loader=yaml.FullLoader)",
              "assets_config = __import__('rllib_kfcpo.envs.fast_reset', fromlist=['_'])"
              ".load_assets_config(self, file)"),
    # G: gymnasium-robotics only for multi-agent tasks.
    SourceFix("G", "safety_gymnasium",
              "from safety_gymnasium.tasks.safe_multi_agent.safe_mujoco_multi import make_ma\n",
              _GYMNASIUM_MAKE_MA_STUB),
)

_applied: set[tuple[str, str]] = set()
_lock = threading.Lock()


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Compiles the fixed source; never reads or writes bytecode caches, so a cached
    unpatched ``.pyc`` can never be used (and a patched one is never cached)."""

    def __init__(self, fullname: str, path: str, fixes: list[SourceFix]) -> None:
        super().__init__(fullname, path)
        self._fixes = fixes

    def get_code(self, fullname: str):  # noqa: D102
        path = self.get_filename(fullname)
        source = self.get_data(path).decode("utf-8")
        for fix in self._fixes:
            source, fired = fix.apply(source)
            if fired:
                with _lock:
                    _applied.add((fix.key, fullname))
        return compile(source, path, "exec", dont_inherit=True)


class _SafetyGymnasiumFinder(importlib.abc.MetaPathFinder):
    """Routes safety_gymnasium modules that have fixes through :class:`_PatchingLoader`."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != PACKAGE and not fullname.startswith(PACKAGE + "."):
            return None
        fixes = [fix for fix in FIXES if fix.matches_module(fullname)]
        if not fixes:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        loader = _PatchingLoader(fullname, spec.origin, fixes)
        return importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=loader,
            submodule_search_locations=spec.submodule_search_locations,
        )


_FINDER = _SafetyGymnasiumFinder()


def install_import_hook() -> None:
    """Puts the fixing finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _SafetyGymnasiumFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)


def import_safety_gymnasium() -> ModuleType:
    """Imports safety_gymnasium with every needed fix applied (idempotent, process-local).

    Raises:
        ImportError: safety-gymnasium is not installed, with the command that installs it.
    """
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    install_import_hook()
    if importlib.util.find_spec(PACKAGE) is None:
        raise ImportError(
            "safety-gymnasium is not installed. Install it WITHOUT its dependencies (its "
            "pins conflict with RLlib): `pip install --no-deps safety-gymnasium==1.0.0`, "
            "or run `bash scripts/setup_env.sh`, which does that."
        )
    import safety_gymnasium

    return safety_gymnasium


def applied_fixes() -> list[tuple[str, str]]:
    """``(fix letter, module)`` of every fix that changed a module in this process."""
    with _lock:
        return sorted(_applied)
