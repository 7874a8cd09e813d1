"""Encoding model: a learned token encoder plus Gaussian noise in the latent (docs/processes.md B5).

Forward, for token sequences x_0 (int [..., l]) and a trainable encoder F (one vector per token):

    x_t = alpha_bar_t F(x_0) + beta_bar_t eps,   eps ~ N(0, I),  x_t in R^{l x D},

trained jointly with the predictor by the cross-entropy -log q(x_0 | x_t) of a per-position
softmax. Generation is hot diffusion (B1) in the latent with F(x0_hat) in place of x_0: the
estimate step draws x0_hat ~ q(x_0 | x_t) (or takes its argmax, or the posterior mean latent
E_q[F(x_0)]), the correct step is (A8) with the inferred noise (x_t - alpha_bar_t F(x0_hat)) /
beta_bar_t. The last step (s = 0, alpha_bar_0 = 1, beta_bar_0 = 0) lands exactly on F(x0_hat),
and `decode` maps a latent to the token of the nearest encoder vector, so the sampler returns
x0_hat ~ q(x_0 | x_1) itself, as docs/processes.md (B5) asks.

Embedding-scale collapse (our guard, not the post's): trained jointly, the encoder can grow
||F|| without bound (the cross-entropy falls as the signal-to-noise ratio of every t rises),
and x_T then no longer looks like the N(0, I) prior. With `normalize` (the default) every
encoder vector is rescaled to norm sqrt(D), i.e. unit mean square per latent dimension, so only
the directions are learned.

The trainable parameters live beside the network's (see `udm.processes.base.split_params`):
the process's own `embedding` field holds the initial values, `bind` puts trained ones in.
"""
import dataclasses
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from udm.processes import tokens
from udm.processes.base import (Capabilities, DiscreteTime, check_no_weighting,
                                correct_by_inversion)
from udm.processes.gaussian import GaussianProcess

Array = Any

ESTIMATES = ("sample", "argmax", "mean")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EncodingProcess(DiscreteTime):
    """x_t = alpha_bar_t F(x_0) + beta_bar_t eps in a D-dimensional latent per token.

    Attributes:
      gaussian: the hot-diffusion schedule (alpha_bar, beta_bar) of the latent.
      embedding: [V, D] raw encoder table (trainable; see `init_params` / `bind`).
      seq_len: l, the sequence length.
      vocab_size: V.
      normalize: rescale every encoder vector to norm sqrt(D) (the collapse guard).
      estimate: how x0_hat is taken from q(x_0 | x_t) in the correct step: "sample" (the
        documented estimate step), "argmax", or "mean" (the posterior mean latent E_q[F(x_0)]).
    """

    capabilities = Capabilities(tokens=True, ddpm_variance=True, learned_params=True,
                                latent_state=True, isotropic_prior=True)

    gaussian: GaussianProcess
    embedding: Array
    seq_len: int = dataclasses.field(metadata=dict(static=True))
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    normalize: bool = dataclasses.field(default=True, metadata=dict(static=True))
    estimate: str = dataclasses.field(default="sample", metadata=dict(static=True))

    def __post_init__(self):
        tokens.check_positive_int("seq_len", self.seq_len)
        tokens.check_positive_int("vocab_size", self.vocab_size)
        if self.estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {', '.join(ESTIMATES)}, "
                             f"got {self.estimate!r}")
        # Only arrays are checked: pytree utilities may rebuild the process around other leaves.
        shape = getattr(self.embedding, "shape", None)
        if shape is not None and (len(shape) != 2 or shape[0] != self.vocab_size):
            raise ValueError(f"embedding must be [vocab_size={self.vocab_size}, D], got {shape}")

    @property
    def num_timesteps(self) -> int:
        return self.gaussian.num_timesteps

    @property
    def latent_dim(self) -> int:
        return self.embedding.shape[-1]

    @property
    def num_input_tokens(self) -> None:
        """The network reads latent vectors [..., l, D], not token ids."""
        return None

    # --- the learned encoder F --------------------------------------------------------------

    def init_params(self) -> Dict[str, Array]:
        """The trainable parameters at initialisation: {"embedding": [V, D]}."""
        return {"embedding": self.embedding}

    def bind(self, params: Dict[str, Array]) -> "EncodingProcess":
        """This process with trained encoder parameters."""
        return dataclasses.replace(self, embedding=params["embedding"])

    def codebook(self) -> Array:
        """F(v) for every token v: [V, D] (rows of norm sqrt(D) with `normalize`)."""
        table = self.embedding
        if self.normalize:
            norms = jnp.sqrt(jnp.sum(table ** 2, axis=-1, keepdims=True))
            table = table * (np.sqrt(self.latent_dim) / jnp.maximum(norms, 1e-12))
        return table

    def encode(self, x0: Array) -> Array:
        """F(x_0): int [..., l] -> [..., l, D]."""
        tokens.check_tokens("x0", x0, self.seq_len)
        return self.codebook()[x0]

    def decode(self, z: Array) -> Array:
        """The token whose F(v) is nearest to each latent: [..., l, D] -> int32 [..., l]."""
        book = self.codebook()
        book_sq = jnp.sum(book ** 2, axis=-1).reshape((1,) * (z.ndim - 1) + (-1,))
        sq = jnp.sum(z ** 2, axis=-1, keepdims=True) - 2.0 * z @ book.T + book_sq
        return jnp.argmin(sq, axis=-1).astype(jnp.int32)

    def diagnostics(self) -> Dict[str, Array]:
        """Training diagnostics: the root mean square of F per latent dimension (1 when
        normalised) and the smallest distance between two encoder vectors."""
        book = self.codebook()
        rms = jnp.sqrt(jnp.mean(book ** 2))
        sq = jnp.sum((book[:, None, :] - book[None, :, :]) ** 2, axis=-1)
        sq = jnp.where(jnp.eye(self.vocab_size, dtype=bool), jnp.inf, sq)
        return {"encoder_rms": rms, "encoder_min_distance": jnp.sqrt(jnp.min(sq))}

    # --- forward corruption and its inverse (docs/udm.md A1; docs/processes.md B5) --------

    def _check_latent(self, name: str, z: Array) -> None:
        shape = jnp.shape(z)
        if len(shape) < 2 or shape[-2:] != (self.seq_len, self.latent_dim):
            raise ValueError(f"{name} must be latents of shape [..., l={self.seq_len}, "
                             f"D={self.latent_dim}], got {shape}")

    def sample_eps(self, key, shape, dtype=jnp.float32) -> Array:
        """eps ~ N(0, I) of shape [..., l, D] for token shape [..., l] (the token dtype is unused)."""
        del dtype
        if len(shape) < 1 or shape[-1] != self.seq_len:
            raise ValueError(f"shape must be [..., l={self.seq_len}], got {tuple(shape)}")
        return jax.random.normal(key, (*shape, self.latent_dim), jnp.float32)

    def forward(self, t, x0: Array, eps: Array) -> Array:
        """x_t = alpha_bar_t F(x_0) + beta_bar_t eps; x0 int [..., l], eps [..., l, D]."""
        self._check_latent("eps", eps)
        return self.gaussian.forward(t, self.encode(x0), eps)

    def invert(self, t, x0: Array, xt: Array) -> Array:
        """eps = (x_t - alpha_bar_t F(x_0)) / beta_bar_t, for t >= 1."""
        return self.gaussian.invert(t, self.encode(x0), xt)

    @property
    def prior_std(self) -> float:
        """Std of the latent prior N(0, I): 1."""
        return 1.0

    def prior(self, key, shape, dtype=jnp.float32) -> Array:
        """x_T ~ N(0, I) of shape [..., l, D] for token shape [..., l]."""
        return self.sample_eps(key, shape, dtype)

    # --- estimate and correct (docs/udm.md A3, A8; docs/processes.md B1, B5) -----------------

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The estimate of q(x_0 | x_t) is the network's logits [..., l, V] themselves."""
        del t, xt
        return output

    def estimate_latent(self, x0_hat_logits: Array, *, key) -> Array:
        """F(x0_hat) for x0_hat from q(x_0 | x_t) by `self.estimate`: [..., l, V] -> [..., l, D]."""
        if self.estimate == "mean":
            return jax.nn.softmax(x0_hat_logits, axis=-1) @ self.codebook()
        if self.estimate == "argmax":
            x0_hat = jnp.argmax(x0_hat_logits, axis=-1)
        else:
            x0_hat = jax.random.categorical(key, x0_hat_logits, axis=-1)
        return self.codebook()[x0_hat]

    def correct(self, t, s, xt: Array, x0_hat_logits: Array, *, sigma_tilde, key) -> Array:
        """x_s = F_s(F(x0_hat), sqrt(1 - sigma_tilde^2) eps_inferred + sigma_tilde eps) (A8).

        Args:
          t, s: scalar ints, 0 <= s < t <= T.
          xt: [..., l, D] latent.
          x0_hat_logits: [..., l, V] logits of q(x_0 | x_t).
          sigma_tilde: scalar in [0, 1] (DDPM / DDIM rules as for hot diffusion).
          key: PRNG key.
        Returns:
          x_s, [..., l, D]; at s = 0 exactly F(x0_hat).
        """
        self._check_latent("xt", xt)
        tokens.check_logits("x0_hat_logits", x0_hat_logits, self.seq_len, self.vocab_size)
        estimate_key, correct_key = jax.random.split(key)
        z0_hat = self.estimate_latent(x0_hat_logits, key=estimate_key)
        return correct_by_inversion(self.gaussian, t, s, xt, z0_hat, sigma_tilde=sigma_tilde,
                                    key=correct_key)

    def ddpm_sigma_tilde(self, t, s) -> Array:
        """DDPM's fresh-noise fraction on the step t -> s, as for hot diffusion."""
        return self.gaussian.ddpm_sigma_tilde(t, s)

    def posterior_logits(self, t, xt: Array, log_prior: Array) -> Array:
        """Exact log q(x_0 | x_t) + const for data with independent positions.

        log q(v | x_t) = log pi_v - ||x_t - alpha_bar_t F(v)||^2 / (2 beta_bar_t^2) per position,
        for tokens drawn i.i.d. from pi (log_prior: [V] or [l, V]); an oracle for tests.
        """
        self._check_latent("xt", xt)
        a, b = self.gaussian.alpha_bar[t], self.gaussian.beta_bar[t]
        book = (a * self.codebook()).reshape((1,) * (xt.ndim - 1) + (self.vocab_size, -1))
        sq = jnp.sum((xt[..., None, :] - book) ** 2, axis=-1)          # [..., l, V]
        log_prior = jnp.broadcast_to(log_prior, sq.shape)
        return log_prior - sq / (2.0 * b ** 2)

    # --- loss (docs/udm.md A4; docs/processes.md B5) --------------------------------------

    def check_weighting(self, weighting: str) -> None:
        check_no_weighting("encoding", weighting)

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(-log q(x_0 | x_t), same) of one example, the mean cross-entropy over positions."""
        del t, eps, weighting
        log_q = jax.nn.log_softmax(output, axis=-1)
        nll = -jnp.mean(jnp.take_along_axis(log_q, x0[..., None], axis=-1))
        return nll, nll


def encoding(seq_len: int, vocab_size: int, *, latent_dim: int = 16, schedule: str = "cosine",
             num_timesteps: int = 1000, normalize: bool = True, estimate: str = "sample",
             init_seed: int = 0, init_scale: float = 1.0) -> EncodingProcess:
    """The encoding model (B5) with a [V, D] encoder initialised to init_scale * N(0, 1).

    Args:
      seq_len, vocab_size: l and V of the token data.
      latent_dim: D, the latent width per token.
      schedule, num_timesteps: the latent's hot-diffusion schedule (udm.schedules) and T.
      normalize: the collapse guard (encoder vectors of norm sqrt(D)).
      estimate: "sample", "argmax" or "mean" (see EncodingProcess).
      init_seed, init_scale: the initial encoder table.
    """
    tokens.check_positive_int("latent_dim", latent_dim)
    if not init_scale > 0:
        raise ValueError(f"init_scale must be > 0, got {init_scale}")
    table = np.random.default_rng(init_seed).standard_normal((vocab_size, latent_dim))
    return EncodingProcess(
        gaussian=GaussianProcess.from_schedule(schedule, num_timesteps),
        embedding=jnp.asarray(init_scale * table, jnp.float32), seq_len=seq_len,
        vocab_size=vocab_size, normalize=normalize, estimate=estimate)
