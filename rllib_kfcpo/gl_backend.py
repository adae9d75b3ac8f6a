"""MuJoCo's OpenGL backend for headless rendering: EGL or OSMesa.

Two facts of the current stack shape this module:

* MuJoCo (4.0.0) and PyOpenGL fix the backend when they are first imported: MuJoCo reads
  ``MUJOCO_GL`` at ``import mujoco``, and PyOpenGL's platform (``PYOPENGL_PLATFORM``,
  which ``mujoco.egl`` / ``mujoco.osmesa`` set) at its first import. One process cannot
  try EGL and then OSMesa, so :func:`probe_backend` renders one tiny frame in a fresh
  interpreter, and :func:`select_gl_backend` sets ``MUJOCO_GL`` for this process's later
  renderers (gymnasium's ``OffScreenViewer`` reads it when it is created).
* ``import mujoco`` with ``MUJOCO_GL=osmesa`` (or ``egl``) on a machine without that
  library fails with ``AttributeError: 'NoneType' object has no attribute 'glGetError'``:
  MuJoCo guards its backend import against ImportError only, and PyOpenGL raises
  AttributeError. :func:`import_mujoco` (called when :mod:`rllib_kfcpo` is imported,
  before anything imports MuJoCo) imports it without ``MUJOCO_GL`` in that case (and for
  a value MuJoCo refuses, which fails ``import mujoco`` with a RuntimeError), so
  training, evaluation and ``rllib --help`` work whatever ``MUJOCO_GL`` says; only
  rendering needs the library, and ``rllib evaluate --video`` then says which package
  to install.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

#: The backends tried, in order, when ``MUJOCO_GL`` is not set.
HEADLESS_BACKENDS: tuple[str, ...] = ("egl", "osmesa")
#: The shared library PyOpenGL loads for each backend, and the Debian packages with it.
BACKEND_LIBRARIES: dict[str, str] = {"egl": "EGL", "osmesa": "OSMesa"}
BACKEND_PACKAGES: dict[str, str] = {
    "egl": "apt-get install libegl1 libegl-mesa0",
    "osmesa": "apt-get install libosmesa6",
}


#: The values MuJoCo accepts for ``MUJOCO_GL`` on Linux (any other fails ``import mujoco``).
MUJOCO_GL_VALUES = frozenset({"", "disable", "disabled", "off", "false", "0", "enable",
                              "enabled", "on", "true", "1", "glfw", "glx", "egl", "osmesa"})


class GLBackendError(RuntimeError):
    """No usable OpenGL backend; the message is one line naming the package to install."""


def missing_library(backend: str) -> str | None:
    """``"libOSMesa not found"`` (or for EGL) if ``backend``'s library cannot be loaded,
    else None (also for a backend this module does not know)."""
    name = BACKEND_LIBRARIES.get(backend)
    if name is None:
        return None
    found = ctypes.util.find_library(name)
    if found is None:
        return f"lib{name} not found"
    try:
        ctypes.CDLL(found)
    except OSError as err:
        return f"lib{name} does not load: {err}"
    return None


def import_mujoco() -> None:
    """Imports MuJoCo, without ``MUJOCO_GL`` if it names a backend whose library is missing
    or a value MuJoCo refuses (see the module docstring); ``MUJOCO_GL`` is restored right
    after, for the renderers that read it later (and :func:`select_gl_backend`)."""
    if "mujoco" in sys.modules:
        return
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend in MUJOCO_GL_VALUES and missing_library(backend) is None:
        import mujoco  # noqa: F401
        return
    saved = os.environ.pop("MUJOCO_GL")
    try:
        import mujoco  # noqa: F401
    finally:
        os.environ["MUJOCO_GL"] = saved


_PROBE = """
import mujoco
model = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><light pos="0 0 2"/><geom size="0.2"/></worldbody></mujoco>')
renderer = mujoco.Renderer(model, 16, 16)
renderer.update_scene(mujoco.MjData(model))
assert renderer.render().shape == (16, 16, 3)
renderer.close()
"""


def probe_backend(backend: str, timeout: float = 60.0) -> str | None:
    """Renders one tiny MuJoCo frame with ``MUJOCO_GL=backend`` in a fresh interpreter
    (a missing or broken GL library may even crash the process that tries).

    Returns None if it rendered, else why not (one short line).
    """
    missing = missing_library(backend)
    if missing is not None:
        return missing
    env = {**os.environ, "MUJOCO_GL": backend}
    env.pop("PYOPENGL_PLATFORM", None)  # mujoco.egl / mujoco.osmesa set it to match
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no frame within {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"exit code {proc.returncode}"
    return reason if len(reason) <= 120 else reason[:117] + "..."


def select_gl_backend() -> str:
    """Chooses MuJoCo's OpenGL backend for headless rendering and sets ``MUJOCO_GL``.

    A ``MUJOCO_GL`` set by the user is honoured (and checked); otherwise EGL, then OSMesa.
    Raises :class:`GLBackendError`, one line naming the package to install, if none
    renders.
    """
    wanted = os.environ.get("MUJOCO_GL", "").strip().lower()
    if wanted:
        reason = probe_backend(wanted)
        if reason is None:
            return wanted
        if wanted in BACKEND_PACKAGES:
            fix = f"install it with `{BACKEND_PACKAGES[wanted]}`"
        elif wanted == "glfw":
            fix = "glfw needs a display"
        else:
            fix = "use egl or osmesa"
        tried = " then ".join(HEADLESS_BACKENDS)
        raise GLBackendError(f"MUJOCO_GL={wanted} cannot render here ({reason}): {fix}, "
                             f"or unset MUJOCO_GL to try {tried}.")
    reasons = []
    for backend in HEADLESS_BACKENDS:
        reason = probe_backend(backend)
        if reason is None:
            os.environ["MUJOCO_GL"] = backend
            return backend
        reasons.append(f"{backend}: {reason}")
    installs = " or ".join(f"`{BACKEND_PACKAGES[b]}` ({b})" for b in HEADLESS_BACKENDS)
    raise GLBackendError(f"no headless OpenGL backend for MuJoCo works here "
                         f"({'; '.join(reasons)}); install one: {installs}.")
