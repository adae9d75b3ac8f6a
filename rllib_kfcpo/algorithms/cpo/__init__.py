"""CPO: Constrained Policy Optimization (Achiam et al. 2017)."""

from rllib_kfcpo.algorithms.cpo.cpo import CPO, CPOConfig

__all__ = ["CPO", "CPOConfig"]
