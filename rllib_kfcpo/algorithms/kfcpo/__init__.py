"""KFCPO: K-FAC natural-gradient constrained policy optimisation."""

from rllib_kfcpo.algorithms.kfcpo.kfcpo import KFCPO, KFCPOConfig

__all__ = ["KFCPO", "KFCPOConfig"]
