"""Training of the thesis's CGAN framework (3.2, Algorithm 2): losses per step, loop, checkpoints.

    core.py         compute_d_loss / compute_g_loss: one iteration's losses, pure functions
    trainer.py      TrainSession (networks, optimisers, RNGs, one step) and train() (the run)
    checkpoint.py   the whole state on disk, atomic, with a ``latest`` pointer
    distributed.py  torchrun / DDP setup and synchronised batch norm (also on CPU)
"""

from nirgan.training.core import Batch, StepNets, compute_d_loss, compute_g_loss
from nirgan.training.trainer import NonFiniteLossError, TrainSession, train

__all__ = ["Batch", "NonFiniteLossError", "StepNets", "TrainSession", "compute_d_loss", "compute_g_loss", "train"]
