"""Which action spaces the safe algorithms support, with one clear error for the others.

A leaf module (gymnasium only): the RL module checks the space it is built for, and the
driver checks the env's space before any worker starts, both with the same message.

Supported:

- ``gymnasium.spaces.Box``: a diagonal Gaussian policy (mean network, state-independent
  log-std);
- ``gymnasium.spaces.Discrete`` starting at 0: a categorical policy (logits network).
"""

from __future__ import annotations

from typing import Literal

import gymnasium as gym

ActionKind = Literal["box", "discrete"]

#: What the error for an unsupported space says is supported.
SUPPORTED_ACTION_SPACES = ("Box (continuous: Gaussian policy), "
                           "Discrete starting at 0 (categorical policy)")


class UnsupportedActionSpaceError(ValueError):
    """The env's action space is none of :data:`SUPPORTED_ACTION_SPACES`."""


def action_kind(space: gym.Space, *, where: str = "") -> ActionKind:
    """``"box"`` or ``"discrete"``; raises :class:`UnsupportedActionSpaceError` otherwise.

    Args:
        space: the env's action space.
        where: names the env in the message (e.g. ``" 'MyEnv-v0'"``, with a leading space).
    """
    if isinstance(space, gym.spaces.Box):
        return "box"
    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) == 0:
            return "discrete"
        hint = (f" A Discrete space must start at 0 (this one starts at {int(space.start)}): "
                "wrap the env so its actions are 0..n-1.")
    else:
        hint = (" Wrap the env so its actions are one of these (e.g. flatten a "
                "MultiDiscrete space into one Discrete).")
    raise UnsupportedActionSpaceError(
        f"The env{where} has action space {space}, which the safe algorithms in rllib_kfcpo "
        f"do not support; supported: {SUPPORTED_ACTION_SPACES}.{hint}"
    )
