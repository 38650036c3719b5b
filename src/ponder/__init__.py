"""ponder: Adaptive Computation Time, Repeat-RNN and the plain RNN, with the tasks and the
experiments of Graves (2016) and Fojo, Campos and Giro-i-Nieto (2018)."""

from .act import ACT
from .repeat import Repeat

__all__ = ["ACT", "Repeat"]
__version__ = "0.1.0"
