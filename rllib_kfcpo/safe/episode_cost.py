"""Jc over the last N finished episodes, as OmniSafe measures it (plain Python, RLlib-free).

RLlib 2.60's windowed episode metrics are the mean over the latest iteration's episodes
(docs/cost-semantics.md): at 8,000 steps per iteration on a 1,000-step task that is about
8 episodes, a noisy number to drive a multiplier or a margin with. OmniSafe's Jc is the
mean episode cost over the last 100 finished episodes (its logger's ``window_lens: 100``).
:class:`EpisodeCostWindow` computes that number on the driver from the sampled episode
chunks themselves: every chunk's per-step costs (``info["cost"]`` after each step) are
added to its episode's running sum, and a finished episode's total enters a window of the
last ``size`` episodes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from rllib_kfcpo.env_data import read_step_cost

#: Running sums of episodes that have not finished yet, at most this many (a restarted
#: env runner leaves its unfinished episodes behind; the oldest are dropped).
MAX_OPEN_EPISODES = 10_000


class EpisodeCostWindow:
    """Mean episode cost over the last ``size`` finished episodes.

    Args:
        size: Number of finished episodes in the window (>= 1).
    """

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r} is invalid: it must be an integer >= 1.")
        self.size = size
        self.costs: deque[float] = deque(maxlen=size)
        self._open: dict[Any, float] = {}

    def observe(self, episodes: Iterable[Any]) -> int:
        """Adds the steps of episode chunks (``SingleAgentEpisode``); returns how many ended.

        Each chunk holds ``len(chunk)`` steps; the cost of step ``t`` is in the info that
        follows it, so a chunk's costs are its infos ``1 .. len(chunk)`` (info 0 belongs to
        the reset or to the previous chunk's last step).
        """
        finished = 0
        for chunk in episodes:
            n = len(chunk)
            cost = sum(read_step_cost(info) for info in chunk.get_infos(slice(1, n + 1)))
            total = self._open.pop(chunk.id_, 0.0) + cost
            if chunk.is_done:
                self.costs.append(total)
                finished += 1
            else:
                self._open[chunk.id_] = total
                while len(self._open) > MAX_OPEN_EPISODES:
                    self._open.pop(next(iter(self._open)))
        return finished

    def mean(self) -> float:
        """The windowed mean episode cost (NaN before the first episode has finished)."""
        return sum(self.costs) / len(self.costs) if self.costs else math.nan

    def state_dict(self) -> dict[str, Any]:
        """Finished episodes' costs and unfinished episodes' running sums."""
        return {"size": self.size, "costs": list(self.costs), "open": dict(self._open)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (keeps this window's ``size``)."""
        self.costs = deque((float(c) for c in state.get("costs", ())), maxlen=self.size)
        self._open = {k: float(v) for k, v in state.get("open", {}).items()}
