"""Forward corruptions x_t = F_t(x_0, eps), each with its inverse and its "correct" step."""
from udm.processes.base import correct_by_inversion
from udm.processes.gaussian import GaussianProcess, LOSS_WEIGHTINGS, PREDICTION_TARGETS

__all__ = ["GaussianProcess", "correct_by_inversion", "LOSS_WEIGHTINGS", "PREDICTION_TARGETS"]
