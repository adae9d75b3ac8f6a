"""Machinery every safe algorithm shares: cost column, cost GAE, episode cost metric."""

from rllib_kfcpo.env_data import MissingCostError
from rllib_kfcpo.safe.callbacks import SafeMetricsCallback
from rllib_kfcpo.safe.config import SafeAlgorithmConfig
from rllib_kfcpo.safe.lagrange import LagrangeMultiplier

__all__ = ["LagrangeMultiplier", "MissingCostError", "SafeAlgorithmConfig",
           "SafeMetricsCallback"]
