"""Known-harmless notices of Ray, RLlib and Tune, filtered where they are logged.

A plain ``rllib train`` printed two dozen lines of notices around its progress lines
("You are running KFCPO on the new API stack!", the ``RLModule(config=...)``
deprecation, "Install gputil for GPU system monitoring.", Tune's experiment table, ...).
None of them asks the user to do anything. :data:`KNOWN_NOISE` lists each one by the
logger that emits it and a regex of its message; :func:`quiet` attaches a filter for
exactly those records to exactly those loggers, so every other record of the same logger
(a real warning, an error) still shows, and so does every other library's.

Where the notices come from:

- the driver (the ``rllib`` process): :func:`quiet` is called by the CLI's ``main``;
- Ray workers (the Tune trial actor, env runners, learners): the CLI starts Ray with
  :data:`WORKER_SETUP_HOOK` as the job's ``worker_process_setup_hook``, which runs
  :func:`quiet` in every worker process before it does anything else;
- "Exception ignored in: LearnerGroup.__del__ / EnvRunner.__del__ ... SystemExit" when
  Ray stops an actor (:data:`KNOWN_UNRAISABLE`) is dropped by :func:`quiet`'s
  ``sys.unraisablehook``;
- the one notice that Ray's C++ core logs in a worker (the actor-restart notice of
  ``core_worker.cc``) cannot be filtered in Python where it is written, so
  :func:`filter_forwarded_worker_logs` drops exactly its lines where the driver prints
  forwarded worker output.

``rllib ... --verbose`` installs none of this. The gymnasium "overflow encountered in
cast" warning is fixed at its cause instead (fix S in :mod:`rllib_kfcpo.envs.compat`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

#: ``runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK}`` quiets Ray workers.
WORKER_SETUP_HOOK = "rllib_kfcpo.cli.quiet.quiet"


@dataclass(frozen=True)
class Notice:
    """One known-harmless log message: the logger that emits it and a regex of its text."""

    logger: str
    pattern: str
    why: str


KNOWN_NOISE: tuple[Notice, ...] = (
    Notice("ray.rllib.algorithms.algorithm_config", r"^You are running \w+ on the new API stack!",
           "the new API stack is this package's only stack"),
    Notice("ray._common.deprecation",
           r"^DeprecationWarning: `RLModule\(config=\[RLModuleConfig object\]\)` has been "
           r"deprecated",
           "RLlib's own catalog path calls the deprecated constructor, not this package"),
    Notice("ray.tune.utils.util", r"^Install gputil for GPU system monitoring",
           "optional monitoring dependency"),
    Notice("ray.tune.trainable.trainable", r"^Trainable\.setup took [0-9.]+ seconds",
           "building env runners takes seconds; reuse_actors does not apply"),
    Notice("ray.train._internal.storage", r"^Checkpoint successfully created at",
           "`rllib train` prints the checkpoint in its summary"),
    Notice("ray.tune.tune", r"^Wrote the latest version of all result files",
           "routine Tune bookkeeping"),
    Notice("ray._private.worker", r"^(Started a local Ray instance|Connected to Ray cluster)",
           "routine start-up"),
    Notice("ray._private.authentication.authentication_token_setup",
           r"^Token authentication is enabled for this Ray cluster",
           "the default of local clusters; nothing to do"),
)

#: Lines of forwarded worker output written by Ray's C++ core (not filterable in Python).
FORWARDED_NOISE: tuple[str, ...] = (
    r"core_worker\.cc:\d+: Actor with class name: '\w+' and ID: '\w+' has constructor "
    r"arguments in the object store and max_restarts > 0",
)


class KnownNoiseFilter(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not any(p.search(message) for p in self.patterns)


_enabled = False


def enable() -> None:
    """Quiets this process and marks Ray started by the CLI to quiet its workers too."""
    global _enabled
    quiet()
    _enabled = True


def enabled() -> bool:
    """True once :func:`enable` ran in this process (the CLI without ``--verbose``)."""
    return _enabled


def ray_init_kwargs() -> dict[str, Any]:
    """Extra ``ray.init`` arguments: the worker setup hook when :func:`enabled`."""
    if not _enabled:
        return {}
    return {"runtime_env": {"worker_process_setup_hook": WORKER_SETUP_HOOK}}


def quiet() -> None:
    """Filters :data:`KNOWN_NOISE` at the loggers that emit it (idempotent).

    Also the ``worker_process_setup_hook`` of Ray workers started by the CLI.
    """
    by_logger: dict[str, list[str]] = {}
    for notice in KNOWN_NOISE:
        by_logger.setdefault(notice.logger, []).append(notice.pattern)
    for name, patterns in by_logger.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, KnownNoiseFilter) for f in log.filters):
            log.addFilter(KnownNoiseFilter(patterns))
    if not getattr(sys.unraisablehook, "_rllib_kfcpo_quiet", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    # Tune's experiment table and "View detailed results" lines come from its new
    # output engine even with verbose=0; the legacy one prints nothing at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


#: ``(exception type, qualified name of the function it escaped from)`` of "Exception
#: ignored in ..." reports that are harmless: Ray stops an actor with SIGTERM (Tune
#: stopping a trial early, or the end of a run tearing down its env runners), and Ray's
#: handler raises SystemExit inside whatever ``__del__`` is running at that moment,
#: which Python reports with a full traceback. RLlib's ``LearnerGroup.__del__`` (trial
#: actor) and ``EnvRunner.__del__`` (env runner actors; seen once in CI at the end of a
#: plain one-iteration run) are the two that printed.
KNOWN_UNRAISABLE: tuple[tuple[type[BaseException], str], ...] = (
    (SystemExit, "LearnerGroup.__del__"),
    (SystemExit, "EnvRunner.__del__"),
)


def _quiet_unraisable(hook: Any) -> Any:
    def handle(unraisable: Any) -> None:
        where = getattr(unraisable.object, "__qualname__", None)
        for kind, qualname in KNOWN_UNRAISABLE:
            if isinstance(unraisable.exc_value, kind) and where == qualname:
                return
        hook(unraisable)

    handle._rllib_kfcpo_quiet = True  # type: ignore[attr-defined]
    return handle


def filter_forwarded_worker_logs() -> bool:
    """Drops :data:`FORWARDED_NOISE` lines from the worker output the driver prints.

    Wraps the handler Ray's driver registers for forwarded worker logs; returns False
    (and changes nothing) when this Ray version has no such handler.
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    patterns = [re.compile(p) for p in FORWARDED_NOISE]
    wrapped = False
    with dispatcher._lock:
        handlers = []
        for name, handler in dispatcher.handlers:
            if name == "ray_print_logs" and not getattr(handler, "_rllib_kfcpo_quiet", False):
                handler = _filtering(handler, patterns)
                wrapped = True
            handlers.append((name, handler))
        dispatcher.handlers = handlers
    return wrapped


def _filtering(handler: Any, patterns: list[re.Pattern[str]]) -> Any:
    def handle(data: dict[str, Any]) -> None:
        lines = [line for line in data.get("lines", [])
                 if not any(p.search(line) for p in patterns)]
        if lines or not data.get("lines"):
            handler({**data, "lines": lines})

    handle._rllib_kfcpo_quiet = True  # type: ignore[attr-defined]
    return handle
