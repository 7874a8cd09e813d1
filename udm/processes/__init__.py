"""Forward corruptions x_t = F_t(x_0, eps), each with its inverse and its "correct" step."""
from udm.processes.base import correct_by_inversion
from udm.processes.gaussian import GaussianProcess, LOSS_WEIGHTINGS, PREDICTION_TARGETS
from udm.registry import Registry

# Config name -> constructor taking the remaining `config.process` fields as keywords.
PROCESSES = Registry("process")
PROCESSES.register("gaussian")(GaussianProcess.from_schedule)

__all__ = ["PROCESSES", "GaussianProcess", "correct_by_inversion", "LOSS_WEIGHTINGS",
           "PREDICTION_TARGETS"]
