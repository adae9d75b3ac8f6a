"""Checkpoints of the safe algorithms: compatibility checks and atomic writes.

A checkpoint records the algorithm that wrote it and this package's format version
(:func:`checkpoint_metadata`); :func:`check_checkpoint_compatible` refuses another
algorithm's or another version's checkpoint before anything is loaded; and
:func:`save_atomically` writes to a hidden sibling directory renamed into place only once
complete, so a crash mid-save never leaves a partial checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable
from typing import Any

from ray.rllib.algorithms.ppo import PPO

from rllib_kfcpo.rllib_seam import checkpoint_class_name

#: Version of the checkpoint layout written by this package (algorithm metadata and the
#: learners' ``safe_state``). Bump it when either changes incompatibly.
CHECKPOINT_FORMAT_VERSION = 1
#: Keys added to every safe algorithm's checkpoint ``metadata.json``.
META_ALGORITHM = "rllib_kfcpo_algorithm"
META_FORMAT_VERSION = "rllib_kfcpo_format_version"


class CheckpointMismatchError(ValueError):
    """A checkpoint written by another algorithm or an incompatible format version."""


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata (``rllib_checkpoint.json``) of a local algorithm checkpoint ({} if none)."""
    file = pathlib.Path(path) / PPO.METADATA_FILE_NAME
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def check_checkpoint_compatible(path: str | os.PathLike, algorithm: type) -> None:
    """Raises :class:`CheckpointMismatchError` if ``path`` cannot be restored as ``algorithm``.

    The checkpoint's algorithm must be ``algorithm`` or one of its base classes, and its
    format version this package's. Checkpoints written before the version was recorded
    (no ``rllib_kfcpo_*`` metadata) are checked by the class RLlib stored with them. Only
    local paths are checked (cloud URIs are left to RLlib).
    """
    if "://" in str(path) or not pathlib.Path(path).is_dir():
        return
    name = algorithm.__name__
    # The algorithm and its bases down to (not including) RLlib's PPO.
    accepted = {c.__name__ for c in algorithm.__mro__
                if isinstance(c, type) and issubclass(c, PPO) and c is not PPO}
    meta = read_checkpoint_metadata(path)
    written_by = meta.get(META_ALGORITHM)
    version = meta.get(META_FORMAT_VERSION, CHECKPOINT_FORMAT_VERSION)
    if written_by is None:  # older checkpoint, or not one of ours
        written_by = checkpoint_class_name(path)
        if written_by is None:
            return
    if written_by not in accepted:
        raise CheckpointMismatchError(
            f"Checkpoint {str(path)!r} was written by {written_by}, not {name}: its "
            f"learner and optimizer state do not fit {name}. Restore it as {written_by} "
            f"(Algorithm.from_checkpoint(path)) or start {name} from scratch."
        )
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"Checkpoint {str(path)!r} has rllib_kfcpo format version {version!r}; this "
            f"rllib_kfcpo reads version {CHECKPOINT_FORMAT_VERSION}. Restore it with the "
            "rllib_kfcpo release that wrote it."
        )


def is_local_path(path: Any, filesystem: Any) -> bool:
    return filesystem is None and path is not None and "://" not in str(path)


def save_atomically(target: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """Calls ``write(tmp_dir)`` and moves the finished directory to ``target`` atomically.

    The temporary directory is a hidden sibling of ``target`` (same filesystem) and is
    removed on errors, so a crash mid-save leaves the previous checkpoint intact and no
    partial one behind.
    """
    target = pathlib.Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(str(tmp))
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _replace_dir(new: pathlib.Path, target: pathlib.Path) -> None:
    """Moves the complete directory ``new`` to ``target`` (same filesystem).

    An absent or empty ``target`` is replaced by one atomic ``rename``. A non-empty one is
    first renamed aside and deleted only after ``new`` is in place, so at every moment a
    complete checkpoint exists at ``target`` or at the hidden ``.old-`` sibling.
    """
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(new, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
