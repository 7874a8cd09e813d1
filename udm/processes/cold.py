"""Cold diffusion with a linear degradation: x_t = F_t(x_0) + sigma eps (docs/processes.md B2, Bansal et al.).

F_t is linear and acts on each channel of an [..., H, W, C] image through a dense [P, P] matrix on
the P = H W flattened pixels (row-major, index h W + w). Dense operators are the honest choice for
the small images this codebase trains on (8x8 digits: P = 64): every F_t is one matmul, a
sub-sequence of times needs no re-composition, and the heat-dissipation forward (C1, heat.py) is
the same class with different matrices. For large images a convolutional F_t would be needed.

The network predicts x_0 and is trained with the l1 loss ||x_0 - G_t(x_t)||_1 (the Cold-Diffusion
default). The correct step is (A8) with the inferred noise sigma eps = x_t - F_t(x0_hat), written
without dividing by sigma so that sigma = 0 (the deterministic Cold-Diffusion forward) is exact:

    x_s = F_s(x0_hat) + sqrt(1 - sigma_tilde^2) (x_t - F_t(x0_hat)) + sigma_tilde sigma eps_new.

sigma_tilde = 1 is the naive sampler (B2.1, Cold-Diffusion Algorithm 1, "default" in their code),
sigma_tilde = 0 the improved one (B2.2, Algorithm 2, "x0_step_down").

sigma is one constant for every t, t = 0 included (x_0 = F_0(x_0) + sigma eps, as in the post):
that is what makes (B2.2) the sigma -> 0 limit of (A7) on every step, the last one included. So
with sigma > 0 the chain ends at the estimate plus sigma-sized noise (the improved sampler with an
exact G ends at x_0 + (x_T - F_T(x_0))); keep sigma small (heat: 0.01).
"""
import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from udm.processes.base import Capabilities, DiscreteTime

Array = Any

# The l1 loss has no per-t weighting here: Cold Diffusion trains the unweighted l1 at t ~ U{1..T}.
LOSS_WEIGHTINGS = ("none",)

# Absolute variance added to the diagonal of the fitted prior covariance before the Cholesky
# factorisation. Blurred-to-the-end states are (nearly) constant images, so the covariance of
# F_T(x_0) has rank ~C and is singular; 1e-6 (a std of 1e-3 on data in [-1, 1], far below one
# grey level of 8-bit or 17-level digit images) makes it positive definite without changing the
# samples visibly.
DEFAULT_PRIOR_JITTER = 1e-6

PADDINGS = {"circular": "wrap", "reflect": "reflect", "zeros": "constant"}


def _check_image_shape(image_shape) -> Tuple[int, int, int]:
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}")
    return image_shape


def _check_nonnegative(name: str, value) -> float:
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearDegradationProcess(DiscreteTime):
    """x_t = F_t(x_0) + sigma eps, eps ~ N(0, I), F_t linear per channel, t in {0, ..., T}.

    Build it with `cold_blur`, `udm.processes.heat.heat_dissipation` or `from_operators`, which
    validate their inputs (the dataclass itself does not, because JAX rebuilds it from leaves).

    Attributes:
      ops: [T + 1, P, P] operators F_t on the P = H W flattened pixels, F_0 = I.
      sigma: scalar noise std (0 gives the deterministic cold forward; `invert` needs sigma > 0).
      prior_mean: [H, W, C] mean of F_T(x_0) over the data, or None before `fit_prior`.
      prior_chol: [P C, P C] lower Cholesky factor of the covariance of F_T(x_0) (flattened in
        [H, W, C] row-major order), or None before `fit_prior`.
      prior_noise: scalar std of extra Gaussian noise added to prior samples (Cold Diffusion's
        "a little noise on the collapsed state" at generation).
      image_shape: (H, W, C), static.
    """

    capabilities = Capabilities(fitted_prior=True)

    ops: Array
    sigma: Array
    image_shape: Tuple[int, int, int] = dataclasses.field(metadata=dict(static=True))
    prior_mean: Optional[Array] = None
    prior_chol: Optional[Array] = None
    prior_noise: Array = 0.0

    @classmethod
    def from_operators(cls, ops, image_shape, *, sigma: float = 0.0,
                       prior_noise: float = 0.0) -> "LinearDegradationProcess":
        """Validates and wraps an operator stack ops [T + 1, P, P] with ops[0] = I."""
        image_shape = _check_image_shape(image_shape)
        sigma = _check_nonnegative("sigma", sigma)
        prior_noise = _check_nonnegative("prior_noise", prior_noise)
        ops = np.asarray(ops)
        p = image_shape[0] * image_shape[1]
        if ops.ndim != 3 or ops.shape[0] < 2 or ops.shape[1:] != (p, p):
            raise ValueError(f"ops must be [T + 1, P, P] with T >= 1 and P = H W = {p}, "
                             f"got {ops.shape}")
        if not np.all(np.isfinite(ops)):
            raise ValueError("ops must be finite")
        if not np.allclose(ops[0], np.eye(p), atol=1e-6):
            raise ValueError("ops[0] must be the identity (F_0(x_0) = x_0)")
        return cls(ops=jnp.asarray(ops, jnp.float32), sigma=jnp.float32(sigma),
                   image_shape=image_shape, prior_noise=jnp.float32(prior_noise))

    @property
    def num_timesteps(self) -> int:
        return self.ops.shape[0] - 1

    # --- the degradation F_t --------------------------------------------------------------

    def _check_x(self, x: Array, what: str) -> None:
        if tuple(x.shape[-3:]) != self.image_shape:
            dims = ", ".join(map(str, self.image_shape))
            raise ValueError(f"{what} must be [..., H, W, C] = [..., {dims}], got {tuple(x.shape)}")

    def degrade(self, t, x: Array) -> Array:
        """F_t(x): ops[t] applied to every channel of x [..., H, W, C]."""
        self._check_x(x, "x")
        h, w, c = self.image_shape
        flat = x.reshape(x.shape[:-3] + (h * w, c))
        out = jnp.einsum("pq,...qc->...pc", self.ops[t].astype(x.dtype), flat)
        return out.reshape(x.shape)

    # --- forward corruption and its inverse (docs/udm.md A1; docs/processes.md B2) -------

    def sample_eps(self, key, shape, dtype=jnp.float32) -> Array:
        """eps ~ q(eps) = N(0, I)."""
        return jax.random.normal(key, shape, dtype)

    def forward(self, t, x0: Array, eps: Array) -> Array:
        """x_t = F_t(x_0) + sigma eps; x0, eps: [..., H, W, C]."""
        return self.degrade(t, x0) + self.sigma.astype(x0.dtype) * eps

    def invert(self, t, x0: Array, xt: Array) -> Array:
        """eps = (x_t - F_t(x_0)) / sigma; defined for sigma > 0 only (inf / nan at sigma = 0)."""
        return (xt - self.degrade(t, x0)) / self.sigma.astype(xt.dtype)

    def prior(self, key, shape, dtype=jnp.float32) -> Array:
        """x_T ~ N(prior_mean, L L^T) + sigma eps + prior_noise eps', the fitted law of F_T(x_0) + noise.

        Raises a ValueError before `fit_prior`: a blurred-to-the-end state is the data's mean
        colour, which no data-free default describes (a zero-mean guess would silently start the
        sampler from a grey image of the wrong brightness).
        """
        if self.prior_mean is None or self.prior_chol is None:
            raise ValueError("this process has no prior over x_T yet: call "
                             "process = process.fit_prior(train_images) first")
        shape = tuple(shape)
        if shape[-3:] != self.image_shape:
            raise ValueError(f"prior shape must be [..., {', '.join(map(str, self.image_shape))}], "
                             f"got {shape}")
        state_key, sigma_key, extra_key = jax.random.split(key, 3)
        d = self.prior_chol.shape[0]
        z = jax.random.normal(state_key, shape[:-3] + (d,), dtype)
        state = jnp.einsum("ij,...j->...i", self.prior_chol.astype(dtype), z).reshape(shape)
        state = state + jnp.broadcast_to(self.prior_mean.astype(dtype), shape)
        sigma = self.sigma.astype(dtype)
        prior_noise = jnp.asarray(self.prior_noise, dtype)
        noise = (sigma * jax.random.normal(sigma_key, shape, dtype)
                 + prior_noise * jax.random.normal(extra_key, shape, dtype))
        return state + noise

    def fit_prior(self, images, *,
                  jitter: float = DEFAULT_PRIOR_JITTER) -> "LinearDegradationProcess":
        """A copy whose prior is the Gaussian fitted to F_T(x_0) over `images` [N, H, W, C].

        Mean and (N - 1)-normalised covariance are computed in float64 on the host, the
        covariance gets `jitter` on its diagonal (see DEFAULT_PRIOR_JITTER) and is factorised
        by Cholesky. Not jittable (it is a one-off fit on data).
        """
        images = np.asarray(images, np.float64)
        if images.ndim != 4 or images.shape[1:] != self.image_shape or images.shape[0] < 2:
            dims = ", ".join(map(str, self.image_shape))
            raise ValueError(f"fit_prior needs images [N >= 2, {dims}], got {images.shape}")
        jitter = _check_nonnegative("jitter", jitter)
        n = images.shape[0]
        h, w, c = self.image_shape
        op_T = np.asarray(self.ops[-1], np.float64)
        collapsed = np.einsum("pq,nqc->npc", op_T, images.reshape(n, h * w, c)).reshape(n, -1)
        mean = collapsed.mean(axis=0)
        centred = collapsed - mean
        cov = centred.T @ centred / (n - 1) + jitter * np.eye(collapsed.shape[1])
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError(f"the covariance of F_T(images) is not positive definite with "
                             f"jitter={jitter}; increase jitter") from None
        return dataclasses.replace(
            self, prior_mean=jnp.asarray(mean.reshape(self.image_shape), jnp.float32),
            prior_chol=jnp.asarray(chol, jnp.float32))

    # --- the correct step (docs/udm.md A8; docs/processes.md B2.1, B2.2) -----------------

    def correct(self, t, s, xt: Array, x0_hat: Array, *, sigma_tilde, key) -> Array:
        """x_s = F_s(x0_hat) + sqrt(1 - sigma_tilde^2) (x_t - F_t(x0_hat)) + sigma_tilde sigma eps.

        (A8) with sigma F_t^{-1}(x0_hat, x_t) = x_t - F_t(x0_hat): sigma_tilde = 1 is the naive
        Cold-Diffusion sampler (B2.1, plus sigma eps_new), sigma_tilde = 0 the improved one (B2.2);
        both are exact at sigma = 0, where the fresh noise vanishes.

        Args:
          t, s: integer times, s < t.
          xt, x0_hat: [..., H, W, C].
          sigma_tilde: scalar in [0, 1].
          key: PRNG key for the fresh noise.
        """
        keep = jnp.sqrt(jnp.maximum(1.0 - sigma_tilde ** 2, 0.0)).astype(xt.dtype)
        eps_new = jax.random.normal(key, xt.shape, xt.dtype)
        fresh = (sigma_tilde * self.sigma).astype(xt.dtype)
        return (self.degrade(s, x0_hat) + keep * (xt - self.degrade(t, x0_hat))
                + fresh * eps_new)

    # --- network parameterisation and loss ------------------------------------------------

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The network predicts x_0 directly."""
        del t, xt
        return output

    def check_weighting(self, weighting: str) -> None:
        if weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {weighting!r} for the l1 loss of a linear "
                             f"degradation; valid names: {', '.join(LOSS_WEIGHTINGS)}")

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(l1, l1) of one example: mean(|x_0 - G_t(x_t)|) (docs/processes.md B2, Cold Diffusion's loss)."""
        del t, eps
        self.check_weighting(weighting)
        l1 = jnp.mean(jnp.abs(x0 - output))
        return l1, l1


# --- Cold-Diffusion blur ---------------------------------------------------------------------

def gaussian_kernel(kernel_size: int, kernel_std: float) -> np.ndarray:
    """[k, k] normalised separable Gaussian exp(-d^2 / (2 std^2)) on offsets d = -(k-1)/2..(k-1)/2."""
    offsets = np.arange(kernel_size) - (kernel_size - 1) / 2
    g = np.exp(-offsets ** 2 / (2.0 * kernel_std ** 2))
    g = g / g.sum()
    return np.outer(g, g)


def blur_operator(hw: Tuple[int, int], kernel: np.ndarray, padding: str = "circular") -> np.ndarray:
    """[P, P] matrix of the 'same'-size depthwise blur of an [H, W] image (row-major pixels).

    Column p is the blur of the p-th basis image, so the matrix is exact for any padding.
    """
    h, w = hw
    k = kernel.shape[0]
    r = k // 2
    basis = np.eye(h * w).reshape(h * w, h, w)
    padded = np.pad(basis, ((0, 0), (r, r), (r, r)), mode=PADDINGS[padding])
    out = np.zeros_like(basis)
    for a in range(k):
        for b in range(k):
            out += kernel[a, b] * padded[:, a:a + h, b:b + w]
    return out.reshape(h * w, h * w).T


def cold_blur(image_shape: Sequence[int] = (8, 8, 1), num_timesteps: int = 20,
              kernel_size: int = 5, kernel_std: float = 2.0, padding: str = "circular",
              sigma: float = 0.0, prior_noise: float = 0.0) -> LinearDegradationProcess:
    """Cold-Diffusion deblurring forward F_t = K_t o ... o K_1 (docs/processes.md B2), adapted to 8x8 digits.

    The Cold-Diffusion MNIST setting is T = 20, an 11x11 kernel of constant std 7 and circular
    padding on 28x28 images. Scaled to 8x8 images (factor 8/28), the std becomes 7 * 8 / 28 = 2.0
    pixels and the kernel 5x5 (it still spans about +-1 std, like 11x11 at std 7). With circular
    padding each K is a circulant matrix; its largest non-unit eigenvalue (the lowest spatial
    frequency, 1/8 cycle per pixel) is 0.565, so the non-constant part of F_T x_0 shrinks by
    0.565^20 ~ 1e-5: F_T(x_0) is the constant per-channel mean image to float32 precision
    (checked in tests/test_cold_heat.py). MNIST's own setting only reaches 0.784^20 ~ 8e-3.

    Args:
      image_shape: (H, W, C).
      num_timesteps: T >= 1.
      kernel_size: odd k of the k x k kernel (used at every step, as in the MNIST setting).
      kernel_std: std in pixels of the Gaussian kernel.
      padding: "circular" (Cold-Diffusion MNIST), "reflect" (their CIFAR / CelebA) or "zeros".
      sigma: noise std of x_t = F_t(x_0) + sigma eps (0: the deterministic cold forward).
      prior_noise: extra std added to prior samples.
    Returns:
      A LinearDegradationProcess without a prior; call `.fit_prior(train_images)` to sample.
    """
    image_shape = _check_image_shape(image_shape)
    if int(num_timesteps) < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if not float(kernel_std) > 0:
        raise ValueError(f"kernel_std must be > 0, got {kernel_std}")
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; valid: {', '.join(PADDINGS)}")
    h, w, _ = image_shape
    r = int(kernel_size) // 2
    if padding == "reflect" and (r >= h or r >= w):
        raise ValueError(f"reflect padding needs kernel_size // 2 < H and W, got {kernel_size} "
                         f"for {image_shape}")
    blur = blur_operator((h, w), gaussian_kernel(int(kernel_size), float(kernel_std)), padding)
    ops = [np.eye(h * w)]
    for _ in range(int(num_timesteps)):
        ops.append(blur @ ops[-1])
    return LinearDegradationProcess.from_operators(np.stack(ops), image_shape, sigma=sigma,
                                                   prior_noise=prior_noise)
