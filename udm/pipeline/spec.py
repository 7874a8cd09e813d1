"""Where the ConfigDict stops: it becomes a typed, frozen `Spec`, checked as a whole.

`from_config(config)` reads an ml_collections config (`configs/base.py` lists every field),
refuses an unknown field, and checks every value it can without running anything, naming the
field (`config.sampler.num_steps must be in [1, T=1000], got 0`). Below this module no function
takes a ConfigDict: the pipeline (`udm.pipeline.train`, `udm.pipeline.evaluate`) reads the specs'
typed fields, and the library below it receives plain values.
"""
import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

from udm import parallel, sampling, variance, variance_heads
from udm.nn import ATTENTION_SCALES
from udm.pipeline import conditional as conditional_lib
from udm.processes import PROCESSES


@dataclasses.dataclass(frozen=True)
class DataSpec:
    name: str = "digits"
    path: str = ""
    test_fraction: float = 1 / 6
    seq_len: int = 0


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """A PROCESSES name and the keyword arguments of its constructor."""
    name: str
    kwargs: Tuple[Tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """"unet" (udm.nn.UNet) or "token_denoiser" (udm.nn.TokenDenoiser) and its fields."""
    name: str
    kwargs: Tuple[Tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    num_steps: int = 2500
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    loss_weighting: str = "none"
    time_sampling: str = "uniform"
    label_dropout: float = 0.1
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    progress_bar: bool = True


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    name: str = "ddim"
    num_steps: int = 50
    eta: float = 0.0
    spacing: Any = "uniform"
    clip_x0: bool = True
    variance: str = "fixed_small"
    clip_pixel: float = 2.0
    clip_sigma_idx: int = 1
    noise_scale: float = 1.0
    snr: float = 0.16
    corrector_steps: int = 1
    solver: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096
    rho: float = 7.0
    threshold: Optional[float] = None
    churn: float = 0.0
    churn_tmin: float = 0.0
    churn_tmax: float = float("inf")
    churn_noise: float = 1.0
    guidance_scale: float = 0.0
    guidance_interval: Tuple[float, ...] = ()
    inpaint: str = ""


@dataclasses.dataclass(frozen=True)
class VarianceSpec:
    head: str = ""
    head_steps: int = 1500
    head_learning_rate: float = 1e-3
    head_width: int = 32
    mc_samples: int = 512
    mc_batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    enabled: bool = True
    samplers: Tuple[str, ...] = ("ddpm", "ddim")
    step_counts: Tuple[int, ...] = (10, 50, 250, 1000)
    num_samples: int = 300
    batch_size: int = 304
    classifier_steps: int = 1500
    grid_size: int = 64


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything an experiment is, typed. `record` is the config as a dict, for checkpoints."""
    seed: int
    data: DataSpec
    process: ProcessSpec
    model: ModelSpec
    train: TrainSpec
    sampler: SamplerSpec
    variance: VarianceSpec
    eval: EvalSpec
    record: Dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def replace(self, **sections) -> "Spec":
        """A copy with some fields of some sections changed, e.g.
        `spec.replace(sampler=dict(variance="analytic", eta=0.0))`, validated again."""
        changes = {}
        for section, fields in sections.items():
            current = getattr(self, section)
            changes[section] = (dataclasses.replace(current, **fields)
                                if isinstance(fields, dict) else fields)
        spec = dataclasses.replace(self, **changes)
        validate(spec)
        return spec


_SECTIONS = dict(data=DataSpec, train=TrainSpec, sampler=SamplerSpec, variance=VarianceSpec,
                 eval=EvalSpec)


def _section(cls, name: str, values: Dict[str, Any]):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown field(s) config.{name}.{', config.{name}.'.join(unknown)}; "
                         f"valid: {', '.join(sorted(fields))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def from_config(config) -> Spec:
    """The typed Spec of an ml_collections config, validated (ValueError names the field)."""
    values = config.to_dict()
    unknown = sorted(set(values) - {"seed", "process", "model", *_SECTIONS})
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}")
    process = dict(values["process"])
    model = dict(values["model"])
    spec = Spec(
        seed=int(values["seed"]),
        process=ProcessSpec(process.pop("name"), tuple(sorted(process.items()))),
        model=ModelSpec(model.pop("name", "unet"), tuple(sorted(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in model.items()))),
        record=values,
        **{name: _section(cls, name, values[name]) for name, cls in _SECTIONS.items()})
    validate(spec)
    return spec


# --- validation: fail before anything compiles or is written ----------------------------------

def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def make_process(spec: Spec):
    """The process the spec names (before any prior fitted to data)."""
    return PROCESSES.get(spec.process.name)(**dict(spec.process.kwargs))


def _validate_process_and_samplers(spec: Spec):
    """Builds the process (its own checks name the field) and checks every sampler against it."""
    PROCESSES.get(spec.process.name)
    try:
        process = make_process(spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.process ({spec.process.name!r}) is invalid: {e}") from e
    try:
        process.check_loss_options(spec.train.loss_weighting, spec.train.time_sampling)
    except ValueError as e:
        raise ValueError(f"config.train.loss_weighting / time_sampling: {e}") from e
    sc = spec.sampler
    for name in (sc.name, *spec.eval.samplers):
        sampling.check_supported(name, process)
    _check(sc.rho > 0, f"config.sampler.rho must be > 0, got {sc.rho}")
    try:
        sampling.time_grid(process, 1, sc.spacing, rho=sc.rho)
    except ValueError as e:
        raise ValueError(f"config.sampler.spacing: {e}") from e
    if sc.threshold is not None:
        _check(0.0 < sc.threshold < 1.0,
               f"config.sampler.threshold must be in (0, 1), got {sc.threshold}")
        _check(not sc.clip_x0, "config.sampler.threshold replaces the static clip: set "
                               "config.sampler.clip_x0=False")
    _check(sc.churn >= 0 and sc.churn_noise >= 0 and sc.churn_tmin <= sc.churn_tmax,
           f"config.sampler.churn, churn_noise must be >= 0 and churn_tmin <= churn_tmax, got "
           f"{sc.churn}, {sc.churn_noise}, {sc.churn_tmin}, {sc.churn_tmax}")
    for name, k in [("config.sampler.num_steps", sc.num_steps)] + [
            ("config.eval.step_counts entries", k) for k in spec.eval.step_counts]:
        sampling.check_num_steps(process, k, name)
    _check(0.0 <= sc.eta <= 1.0, f"config.sampler.eta must be in [0, 1], got {sc.eta}")
    _check(sc.noise_scale >= 0, f"config.sampler.noise_scale must be >= 0, got {sc.noise_scale}")
    return process


def _validate_variance(spec: Spec, process) -> None:
    sc, vc = spec.sampler, spec.variance
    _check(sc.variance in variance.SAMPLING_VARIANCES,
           f"config.sampler.variance must be one of {', '.join(variance.SAMPLING_VARIANCES)}, "
           f"got {sc.variance!r}")
    _check(vc.head in ("",) + variance_heads.HEAD_KINDS,
           f"config.variance.head must be '' or one of {', '.join(variance_heads.HEAD_KINDS)}, "
           f"got {vc.head!r}")
    if sc.variance in variance_heads.HEAD_KINDS:
        _check(vc.head == sc.variance,
               f"config.sampler.variance={sc.variance!r} needs a trained head: set "
               f"config.variance.head={sc.variance!r} (got {vc.head!r})")
    if sc.variance != "fixed_small" or vc.head:
        caps = process.capabilities
        _check(caps.gaussian_marginals and caps.ddpm_variance and not caps.continuous_time
               and not caps.tokens,
               f"config.sampler.variance / config.variance.head apply to the discrete Gaussian "
               f"process, got process {spec.process.name!r}")
    if sc.variance != "fixed_small":
        bad = [n for n in (sc.name, *spec.eval.samplers) if n not in ("ddpm", "ddim")]
        _check(not bad, f"config.sampler.variance={sc.variance!r} works with the ddpm and ddim "
                        f"samplers only, got {bad}")
    _check(sc.clip_pixel >= 0, f"config.sampler.clip_pixel must be >= 0, got {sc.clip_pixel}")
    _check(sc.clip_sigma_idx >= 0,
           f"config.sampler.clip_sigma_idx must be >= 0, got {sc.clip_sigma_idx}")
    _check(vc.head_steps >= 0, f"config.variance.head_steps must be >= 0, got {vc.head_steps}")
    _check(vc.mc_samples >= 1 and vc.mc_batch_size >= 1 and vc.mc_samples % vc.mc_batch_size == 0,
           f"config.variance.mc_samples must be a positive multiple of config.variance."
           f"mc_batch_size, got {vc.mc_samples} and {vc.mc_batch_size}")


def _validate_conditioning(spec: Spec, process) -> None:
    """Guidance needs a class-conditional model; inpaint must name a part of this data."""
    sc = spec.sampler
    num_classes = dict(spec.model.kwargs).get("num_classes")
    w = sc.guidance_scale
    _check(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
           and w >= 0, f"config.sampler.guidance_scale must be a finite number >= 0, got {w!r}")
    interval = sc.guidance_interval
    _check(len(interval) in (0, 2) and all(isinstance(v, (int, float)) for v in interval)
           and (not interval or interval[0] <= interval[1]),
           f"config.sampler.guidance_interval must be () (always) or (t_lo, t_hi) with "
           f"t_lo <= t_hi, got {interval!r}")
    if (w != 0 or interval) and num_classes is None:
        raise ValueError("config.sampler.guidance_scale / guidance_interval need a "
                         "class-conditional model: set config.model.num_classes (e.g. "
                         "configs/ddpm_digits.py:conditional)")
    if sc.inpaint:
        caps = process.capabilities
        _check(not (caps.latent_state or caps.learned_params),
               f"config.sampler.inpaint is not supported for the {spec.process.name!r} process, "
               f"whose state is a learned encoding of x_0 (no known part can be kept)")
        try:
            conditional_lib.check_inpaint(sc.inpaint, tokens=caps.tokens,
                                          seq_len=process.seq_len if caps.tokens else None)
        except ValueError as e:
            raise ValueError(f"config.sampler.{e}") from None
    if (num_classes is not None or sc.inpaint) and sc.variance != "fixed_small":
        raise ValueError(f"config.sampler.variance={sc.variance!r} is not supported with "
                         f"guidance or inpainting (its variances are of the unconditional "
                         f"model); use fixed_small")


def validate(spec: Spec) -> None:
    """Raises ValueError naming the config field for every bad value seen without running."""
    process = _validate_process_and_samplers(spec)
    _validate_variance(spec, process)
    ATTENTION_SCALES.get(dict(spec.model.kwargs).get("attention_scale", "standard"))
    tc = spec.train
    num_classes = dict(spec.model.kwargs).get("num_classes")
    if num_classes is not None:
        _check(spec.model.name == "unet",
               f"config.model.num_classes (class-conditional training) needs the image UNet, "
               f"got config.model.name={spec.model.name!r}")
        _check(isinstance(num_classes, int) and not isinstance(num_classes, bool)
               and num_classes >= 1,
               f"config.model.num_classes must be None or an int >= 1, got {num_classes!r}")
        _check(not spec.variance.head,
               f"config.variance.head={spec.variance.head!r} is not supported with a "
               f"class-conditional model (config.model.num_classes)")
    _check(0.0 <= tc.label_dropout <= 1.0,
           f"config.train.label_dropout must be in [0, 1], got {tc.label_dropout}")
    _check(tc.num_steps >= 1, f"config.train.num_steps must be >= 1, got {tc.num_steps} (0 "
                              f"would evaluate an untrained model; to evaluate the checkpoint in "
                              f"a workdir without training, pass --evaluate_only)")
    _check(tc.batch_size >= 1, f"config.train.batch_size must be >= 1, got {tc.batch_size}")
    _check(tc.learning_rate > 0, f"config.train.learning_rate must be > 0, got {tc.learning_rate}")
    _check(0.0 <= tc.ema_decay < 1.0, f"config.train.ema_decay must be in [0, 1), got {tc.ema_decay}")
    _check(tc.log_every >= 1, f"config.train.log_every must be >= 1, got {tc.log_every}")
    _check(tc.checkpoint_every >= 1,
           f"config.train.checkpoint_every must be >= 1, got {tc.checkpoint_every}")
    mesh = parallel.data_mesh()
    parallel.check_divisible(tc.batch_size, mesh, "config.train.batch_size")
    parallel.check_divisible(spec.eval.batch_size, mesh, "config.eval.batch_size")
    if spec.sampler.variance in variance.MONTE_CARLO_VARIANCES:
        parallel.check_divisible(spec.variance.mc_batch_size, mesh,
                                 "config.variance.mc_batch_size")
    _validate_conditioning(spec, process)


def head_train_spec(spec: Spec) -> TrainSpec:
    """The training settings of the variance head: config.train with its step count and rate."""
    return dataclasses.replace(spec.train, num_steps=spec.variance.head_steps,
                               learning_rate=spec.variance.head_learning_rate)


__all__ = ["DataSpec", "EvalSpec", "ModelSpec", "ProcessSpec", "SamplerSpec", "Spec", "TrainSpec",
           "VarianceSpec", "from_config", "head_train_spec", "make_process", "validate"]
