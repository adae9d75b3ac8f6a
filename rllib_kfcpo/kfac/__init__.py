"""K-FAC as a plain torch component (usable and testable without RLlib).

- `layer.py`: reading one Linear layer's statistics (inputs, output gradients);
- `block.py`: inverting and applying one curvature block (Kronecker, diagonal);
- `preconditioner.py`: when to update, all-reduce, fold, decompose and precondition;
- `distributed.py`: averaging tensors across data-parallel learners.
"""

from rllib_kfcpo.distributed import all_reduce_mean_
from rllib_kfcpo.kfac.block import DiagonalBlock, KroneckerBlock
from rllib_kfcpo.kfac.layer import LinearStatistics
from rllib_kfcpo.kfac.preconditioner import KFACPreconditioner

__all__ = ["DiagonalBlock", "KFACPreconditioner", "KroneckerBlock", "LinearStatistics",
           "all_reduce_mean_"]
