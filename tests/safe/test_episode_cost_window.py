"""EpisodeCostWindow against a hand count over real SingleAgentEpisode chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_kfcpo.env_data import MissingCostError
from rllib_kfcpo.safe.episode_cost import EpisodeCostWindow


def _chunks(costs: list[float], cut_every: int, done: bool = True) -> list[SingleAgentEpisode]:
    """One episode with the given per-step costs, cut into chunks as env runners do."""
    episode = SingleAgentEpisode(observations=[np.zeros(1)], infos=[{}])
    chunks = []
    for t, cost in enumerate(costs):
        last = t == len(costs) - 1
        episode.add_env_step(np.zeros(1), 0, 0.0, infos={"cost": cost},
                             terminated=done and last)
        if (t + 1) % cut_every == 0 and not (done and last):
            chunks.append(episode)
            episode = episode.cut()
    if len(episode):
        chunks.append(episode)
    return chunks


def test_window_sums_costs_across_chunks_and_keeps_the_last_n():
    rng = np.random.default_rng(0)
    episodes = [rng.uniform(0, 2, size=int(rng.integers(5, 30))).tolist() for _ in range(7)]
    window = EpisodeCostWindow(3)
    # Interleave chunks of different episodes, as several envs produce them.
    stream = [_chunks(costs, cut_every=4) for costs in episodes]
    finished = 0
    while any(stream):
        for chunks in stream:
            if chunks:
                finished += window.observe([chunks.pop(0)])
    assert finished == 7
    # Episodes finish in order of their chunk count; recompute that order by hand.
    order = sorted(range(7), key=lambda k: (math.ceil(len(episodes[k]) / 4), k))
    expected = [sum(episodes[k]) for k in order][-3:]
    assert list(window.costs) == pytest.approx(expected, abs=1e-12)
    assert window.mean() == pytest.approx(sum(expected) / 3, abs=1e-12)


def test_unfinished_episode_waits_and_state_round_trips():
    window = EpisodeCostWindow(5)
    first, second = _chunks([1.0] * 8, cut_every=4)
    assert window.observe([first]) == 0 and math.isnan(window.mean())
    restored = EpisodeCostWindow(5)
    restored.load_state_dict(window.state_dict())
    assert restored.observe([second]) == 1
    assert restored.mean() == pytest.approx(8.0)


def test_bad_size_and_missing_cost_are_refused():
    with pytest.raises(ValueError, match="size=0 is invalid"):
        EpisodeCostWindow(0)
    episode = SingleAgentEpisode(observations=[np.zeros(1)], infos=[{}])
    episode.add_env_step(np.zeros(1), 0, 0.0, infos={}, terminated=True)
    with pytest.raises(MissingCostError):
        EpisodeCostWindow(2).observe([episode])
