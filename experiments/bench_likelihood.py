"""Probability-flow ODE likelihood: one jitted diffrax solve against a host-driven scipy solve.

  python -m experiments.bench_likelihood [--batch=64] [--repeats=10] [--unet_repeats=1]
      [--channels=8]

Both integrate the SAME augmented drift (x, delta) of `udm.likelihood.make_augmented_drift`
(Hutchinson divergence, one Rademacher probe, the same probe for both) from t_min to 1 with a
Dormand-Prince 5(4) pair at rtol = atol = 1e-5 on a batch of dequantised digits (8x8x1, 17
levels), VP SDE:

* jitted: `make_ode_log_likelihood(..., solver="dopri5")`, the whole adaptive solve in one XLA
  program;
* scipy: `scipy.integrate.solve_ivp(method="RK45")` as in the Score SDE code
  (`likelihood.py`): the batch flattened into one float64 vector, every drift evaluation one
  jitted JAX call, the state crossing to the host and back each time.

Three score functions, one row each: the exact score of a Gaussian fitted to the training
digits, with a diagonal covariance (next to no compute: the row measures pure overhead) and a
full one (two 64x64 matmuls per evaluation), and a small random-weight UNet eps-predictor
(compute-bound on CPU). Printed per row: seconds per call (median of `repeats` calls, both
compiled beforehand), the speed ratio scipy / jitted (target >= 5), the NFE of each, and the max
|NLL difference| in bits/dim (target <= 0.01).
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from scipy import integrate

from experiments.timing import median_time
from udm import likelihood
from udm.data import load_dataset
from udm.nn import UNet
from udm.processes.sde import VPSDE, network_score_fn

_BATCH = flags.DEFINE_integer("batch", 64, "Examples per likelihood call.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repetitions (the median is reported).")
_UNET_REPEATS = flags.DEFINE_integer("unet_repeats", 1, "Timed repetitions of the UNet row.")
_CHANNELS = flags.DEFINE_integer("channels", 8, "UNet base width.")

NUM_LEVELS = 17          # scikit-learn digits: 17 grey levels
TOL = 1e-5
TARGET_RATIO = 5.0
TARGET_BPD = 0.01


def gaussian_score_fn(sde, images, *, diagonal=False):
    """The exact score of p_t for x_0 ~ N(m, Sigma) fitted to `images` [N, H, W, C].

    `diagonal=True` fits a diagonal Sigma (one variance per pixel): almost no compute per
    evaluation, so its row measures the solver's own overhead. The statistics are the score's
    params (arguments, not constants baked into the compiled loop).

    Returns:
        (score_fn, params).
    """
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    cov = np.cov(flat, rowvar=False) + 1e-3 * np.eye(flat.shape[1])
    if diagonal:
        lam, rot = np.diag(cov), np.eye(flat.shape[1])
    else:
        lam, rot = np.linalg.eigh(cov)
    params = {name: jnp.asarray(value, jnp.float32)
              for name, value in (("mean", flat.mean(axis=0)), ("lam", lam), ("rot", rot))}

    def score(params, x, t):
        alpha_bar, beta_bar = sde.marginal(t)
        var = alpha_bar ** 2 * params["lam"] + beta_bar ** 2             # [D] eigen-variances
        y = x.reshape(x.shape[0], -1) - alpha_bar * params["mean"][None]
        if diagonal:
            return (-y / var[None]).reshape(x.shape)
        rot = params["rot"]
        return ((-(y @ rot) / var[None]) @ rot.T).reshape(x.shape)

    return score, params


def unet_score_fn(sde, shape, channels):
    """A random-weight UNet eps-predictor as a score function, and its parameters."""
    model = UNet(channels=channels, channel_mults=(1, 2), num_groups=4)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,)))["params"]
    # Perturb the zero-initialised output layer so the network does real work.
    params = jax.tree.map(lambda p: p + 0.01 * jnp.ones_like(p), params)
    apply_fn = lambda p, x, t: model.apply({"params": p}, x, t)
    return network_score_fn(sde, apply_fn, "eps"), params


def make_scipy_log_likelihood(sde, score_fn, probes, params, x):
    """The Score SDE code's solve: RK45 on the flattened batch, one jitted drift per evaluation.

    Args:
        probes: [1, B, ...] the Hutchinson probe, fixed for the solve.
        params, x: example arguments, to compile the drift before any timing.

    Returns:
        `fn(params, x [B, ...]) -> (log_likelihood [B] float64, nfe)`.
    """
    shape = probes.shape[1:]
    size = int(np.prod(shape))
    augmented = likelihood.make_augmented_drift(sde, score_fn)

    @jax.jit
    def flat_drift(params, y, t, probes):
        dx, div = augmented(params, y[:size].reshape(shape), t, probes)
        return jnp.concatenate([dx.reshape(-1), div])

    y0 = jnp.concatenate([jnp.reshape(x, -1), jnp.zeros(shape[0])])
    jax.block_until_ready(flat_drift(params, y0, jnp.float32(sde.t_min), probes))   # compile

    def fn(params, x):
        def ode_func(t, y):
            out = flat_drift(params, jnp.asarray(y, jnp.float32), jnp.float32(t), probes)
            return np.asarray(out, np.float64)

        init = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(shape[0])])
        sol = integrate.solve_ivp(ode_func, (sde.t_min, 1.0), init, rtol=TOL, atol=TOL,
                                  method="RK45")
        final = sol.y[:, -1]
        z = jnp.asarray(final[:size].reshape(shape), jnp.float32)
        prior_logp = np.asarray(jax.vmap(sde.prior_logp)(z), np.float64)
        return prior_logp + final[size:], sol.nfev

    return fn


def _timed(fn, repeats):
    """(median seconds of `fn()` over `repeats` calls, the last call's result)."""
    results = []
    seconds = median_time(lambda: results.append(fn()) or results[-1], repeats)
    return seconds, results[-1]


def run_row(name, sde, score_fn, params, x, key, repeats):
    """Times both solves on one batch (compiled beforehand) and prints one row."""
    dim = int(np.prod(x.shape[1:]))
    fn = likelihood.make_ode_log_likelihood(sde, score_fn, divergence="hutchinson",
                                            probe="rademacher", num_probes=1, solver="dopri5",
                                            rtol=TOL, atol=TOL)
    compiled = fn.lower(params, x, key=key).compile()
    t_jit, out = _timed(lambda: compiled(params, x, key=key), repeats)
    if not bool(out.success):
        print(f"{name}: the jitted solve failed (max_steps); nfe {int(out.nfe)}")
        return
    # The same probe as the jitted solve draws from `key`.
    probes = likelihood.draw_probes(x.shape, key=key, probe="rademacher", num_probes=1)
    scipy_fn = make_scipy_log_likelihood(sde, score_fn, probes, params, x)
    t_scipy, (scipy_ll, scipy_nfe) = _timed(lambda: scipy_fn(params, x), repeats)
    bpd_jit = np.asarray(likelihood.bits_per_dim(out.log_likelihood, dim,
                                                 num_levels=NUM_LEVELS), np.float64)
    bpd_scipy = np.asarray(likelihood.bits_per_dim(scipy_ll, dim, num_levels=NUM_LEVELS))
    ratio = t_scipy / t_jit
    diff = float(np.max(np.abs(bpd_jit - bpd_scipy)))
    met = "met" if ratio >= TARGET_RATIO and diff <= TARGET_BPD else "NOT met"
    print(f"{name:>10}: jitted {t_jit * 1e3:.1f} ms (nfe {int(out.nfe)}), scipy "
          f"{t_scipy * 1e3:.1f} ms "
          f"(nfe {scipy_nfe}); ratio {ratio:.1f}x (target >= {TARGET_RATIO:.0f}); "
          f"mean bpd {bpd_jit.mean():.3f}, max |bpd diff| {diff:.2e} (target <= {TARGET_BPD}); "
          f"{met}")


def main(argv):
    del argv
    batch = _BATCH.value
    dataset = load_dataset("digits")
    images = dataset.test_images[:batch]
    shape = images.shape[1:]
    sde = VPSDE()
    data_key, probe_key = jax.random.split(jax.random.PRNGKey(0))
    x = likelihood.dequantize(jnp.asarray(images), NUM_LEVELS, key=data_key)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; batch {batch}; image "
          f"{shape}; {NUM_LEVELS} levels; VP SDE; Dopri5 / RK45, rtol = atol = {TOL}; "
          f"Hutchinson, 1 Rademacher probe")
    for name, diagonal in (("gauss-dia", True), ("gauss-full", False)):
        score_fn, params = gaussian_score_fn(sde, dataset.train_images, diagonal=diagonal)
        run_row(name, sde, score_fn, params, x, probe_key, _REPEATS.value)
    score_fn, params = unet_score_fn(sde, shape, _CHANNELS.value)
    run_row(f"unet-{_CHANNELS.value}", sde, score_fn, params, x, probe_key, _UNET_REPEATS.value)


if __name__ == "__main__":
    app.run(main)
