"""Forward corruptions x_t = F_t(x_0, eps), each with its inverse and its "correct" step.

Every process satisfies one contract (`udm.processes.base.Process`, optional abilities declared in
its `Capabilities`) and runs through the one sampler entry point (udm.sampling.make_sampler) and
the one loss (udm.losses.make_loss_fn): Gaussian noise (B1), cold blur and heat dissipation (B2,
C1), masking (B4), edit (B3), the encoding model (B5, a learned encoder with noise in its latent),
D3PM transition matrices (C2) (docs/processes.md), the continuous-time SDEs (docs/sde_ode.md) and
flow matching (docs/flow_matching.md).
"""
from udm.processes.base import Capabilities, Process, correct_by_inversion
from udm.processes.cold import LinearDegradationProcess, cold_blur
from udm.processes.d3pm import D3PMProcess, d3pm_absorbing, d3pm_uniform
from udm.processes.edit import EditProcess, edit
from udm.processes.flow import FlowProcess, flow
from udm.processes.encoding import EncodingProcess, encoding
from udm.processes.gaussian import GaussianProcess, LOSS_WEIGHTINGS, PREDICTION_TARGETS
from udm.processes.heat import heat_dissipation
from udm.processes.masking import MaskingProcess, masking
from udm.registry import Registry
from udm.processes.sde import SDE, get_sde

# Config name -> constructor taking the remaining `config.process` fields as keywords.
PROCESSES = Registry("process")
PROCESSES.register("gaussian")(GaussianProcess.from_schedule)
PROCESSES.register("cold_blur")(cold_blur)
PROCESSES.register("heat")(heat_dissipation)
PROCESSES.register("masking")(masking)
PROCESSES.register("edit")(edit)
PROCESSES.register("d3pm_uniform")(d3pm_uniform)
PROCESSES.register("d3pm_absorbing")(d3pm_absorbing)
PROCESSES.register("encoding")(encoding)
PROCESSES.register("flow")(flow)


@PROCESSES.register("sde")
def _sde(sde: str = "vp", **hyperparameters):
    """A continuous-time SDE (udm.processes.sde), e.g. config.process = {name: "sde", sde: "ve"}."""
    return get_sde(sde, **hyperparameters)


__all__ = ["PROCESSES", "Capabilities", "Process", "SDE", "GaussianProcess", "LinearDegradationProcess",
           "MaskingProcess", "EditProcess", "D3PMProcess", "EncodingProcess", "FlowProcess",
           "correct_by_inversion",
           "LOSS_WEIGHTINGS", "PREDICTION_TARGETS", "cold_blur", "heat_dissipation", "masking",
           "edit", "encoding", "d3pm_uniform", "d3pm_absorbing", "flow"]
