"""Forward corruptions x_t = F_t(x_0, eps), each with its inverse and its "correct" step.

Every process runs through the one scan sampler (udm.samplers.make_sampler) and the one loss
(udm.losses.make_loss_fn): Gaussian noise (B1), cold blur and heat dissipation (B2, C1),
masking (B4), edit (B3), the encoding model (B5, a learned encoder with noise in its latent)
and D3PM transition matrices (C2) (spec 01).
"""
from udm.processes.base import correct_by_inversion
from udm.processes.cold import LinearDegradationProcess, cold_blur
from udm.processes.d3pm import D3PMProcess, d3pm_absorbing, d3pm_uniform
from udm.processes.edit import EditProcess, edit
from udm.processes.encoding import EncodingProcess, encoding
from udm.processes.gaussian import GaussianProcess, LOSS_WEIGHTINGS, PREDICTION_TARGETS
from udm.processes.heat import heat_dissipation
from udm.processes.masking import MaskingProcess, masking
from udm.registry import Registry
from udm.sde import get_sde

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


@PROCESSES.register("sde")
def _sde(sde: str = "vp", **hyperparameters):
    """A continuous-time SDE (udm.sde), e.g. config.process = {name: "sde", sde: "ve"}."""
    return get_sde(sde, **hyperparameters)


# Whether a process models token sequences (data int32 [B, l], the network outputs logits; the
# encoding model's network reads latents [B, l, D] instead of ids).
TOKEN_PROCESSES = (MaskingProcess, EditProcess, D3PMProcess, EncodingProcess)

__all__ = ["PROCESSES", "TOKEN_PROCESSES", "GaussianProcess", "LinearDegradationProcess",
           "MaskingProcess", "EditProcess", "D3PMProcess", "EncodingProcess", "correct_by_inversion",
           "LOSS_WEIGHTINGS", "PREDICTION_TARGETS", "cold_blur", "heat_dissipation", "masking",
           "edit", "encoding", "d3pm_uniform", "d3pm_absorbing"]
