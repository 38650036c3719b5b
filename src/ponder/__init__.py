"""ponder: Adaptive Computation Time, PonderNet, Repeat-RNN and the plain RNN, with the tasks
and the experiments of Graves (2016), Fojo, Campos and Giro-i-Nieto (2018) and Banino et al.
(2021)."""

from .methods import ACT, PonderNet, Repeat

__all__ = ["ACT", "PonderNet", "Repeat"]
__version__ = "0.1.0"
