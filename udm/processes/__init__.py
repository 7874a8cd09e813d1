"""Forward corruptions x_t = F_t(x_0, eps), each with its inverse and its "correct" step."""
from udm.processes.base import correct_by_inversion
from udm.processes.gaussian import GaussianProcess, LOSS_WEIGHTINGS, PREDICTION_TARGETS
from udm.registry import Registry
from udm.sde import get_sde

# Config name -> constructor taking the remaining `config.process` fields as keywords.
PROCESSES = Registry("process")
PROCESSES.register("gaussian")(GaussianProcess.from_schedule)


@PROCESSES.register("sde")
def _sde(sde: str = "vp", **hyperparameters):
    """A continuous-time SDE (udm.sde), e.g. config.process = {name: "sde", sde: "ve"}."""
    return get_sde(sde, **hyperparameters)

__all__ = ["PROCESSES", "GaussianProcess", "correct_by_inversion", "LOSS_WEIGHTINGS",
           "PREDICTION_TARGETS"]
