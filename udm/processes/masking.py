"""Masking model: F_t replaces t of the l tokens by [MASK] (docs/processes.md B4), T = l.

eps is one uniform priority per position; the t smallest are masked (udm.processes.tokens).
The network reads vocab_size + 1 input ids ([MASK] = vocab_size) and outputs logits over the
vocab_size real tokens; q(x_0 | x_t) copies the unmasked tokens (the loss only trains the masked
positions, so the logits there carry no information).

The correct step x_t -> x_s (s < t) samples x0_hat at the masked positions and applies F_s with
  sigma_tilde = 1: fresh priorities (the baseline: re-mask s random positions of x0_hat);
  sigma_tilde = 0: priorities inferred from the mask of x_t (the improved sampler: keep s of the
    t masked positions masked, i.e. unmask t - s of them chosen uniformly with tokens drawn from
    q(x_0 | x_t) there; unmasked tokens never change).
On the full chain (s = t - 1) the improved step is "pick one masked position uniformly, sample
its token, unmask it", close to Gibbs sampling from a masked LM.
"""
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from udm.processes import tokens
from udm.processes.base import Capabilities, DiscreteTime, check_no_weighting

Array = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskingProcess(DiscreteTime):
    """x_t = x_0 with the t lowest-priority positions set to [MASK] = vocab_size.

    Attributes:
      seq_len: l = T, the fixed sequence length.
      vocab_size: V, number of real tokens; ids 0..V-1, [MASK] = V.
      target_entropy: None samples tokens from q(x_0 | x_t) itself; a value H* (nats) samples from
        the entropy-normalised q with entropy H* (udm.entropy, the post's top-k/top-p substitute).
    """

    capabilities = Capabilities(tokens=True, absorbing=True)

    seq_len: int = dataclasses.field(metadata=dict(static=True))
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    target_entropy: Optional[float] = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        tokens.check_positive_int("seq_len", self.seq_len)
        tokens.check_positive_int("vocab_size", self.vocab_size)
        if self.target_entropy is not None and not self.target_entropy >= 0:
            raise ValueError(f"target_entropy must be None or >= 0 nats, got {self.target_entropy}")

    @property
    def num_timesteps(self) -> int:
        return self.seq_len

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def num_input_tokens(self) -> int:
        """Size of the network's input vocabulary: the real tokens plus [MASK]."""
        return self.vocab_size + 1

    # --- forward corruption and its inverse (docs/udm.md A1; docs/processes.md B4) ---------

    def sample_eps(self, key, shape, dtype=jnp.int32) -> Array:
        """eps ~ U[0, 1)^shape: per-position priorities (the token dtype is not needed)."""
        del dtype
        if len(shape) < 1 or shape[-1] != self.seq_len:
            raise ValueError(f"shape must be [..., l={self.seq_len}], got {tuple(shape)}")
        return jax.random.uniform(key, shape, jnp.float32)

    def forward(self, t, x0: Array, eps: Array) -> Array:
        """x_t = F_t(x_0, eps): [MASK] at the t positions with the smallest eps, x_0 elsewhere.

        Args:
          t: scalar int in [0, l].
          x0: int [..., l] tokens in [0, V).
          eps: float [..., l] priorities from `sample_eps`.
        """
        tokens.check_time(t, self.num_timesteps)
        tokens.check_tokens("x0", x0, self.seq_len)
        masked = tokens.corrupted_positions(t, eps)
        return jnp.where(masked, jnp.asarray(self.mask_id, x0.dtype), x0)

    def invert(self, t, x0: Array, xt: Array) -> Array:
        """The corruption read off x_t: the boolean [..., l] mask of [MASK] positions.

        The priorities themselves are not recoverable, only which t of them are the smallest;
        that set is all F_s needs for s <= t (see `tokens.inferred_priority`).
        """
        del t, x0
        tokens.check_tokens("xt", xt, self.seq_len)
        return xt == self.mask_id

    def prior(self, key, shape, dtype=jnp.int32) -> Array:
        """x_T = l masks (p(x_T) is exactly this point)."""
        del key
        if len(shape) < 1 or shape[-1] != self.seq_len:
            raise ValueError(f"shape must be [..., l={self.seq_len}], got {tuple(shape)}")
        return jnp.full(shape, self.mask_id, dtype)

    # --- estimate and correct (docs/udm.md A3, A8; docs/processes.md B4) ---------------------

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The estimate of q(x_0 | x_t) is the network's logits [..., l, V] themselves."""
        del t, xt
        return output

    def estimate(self, xt: Array, x0_hat_logits: Array, *, key) -> Array:
        """x0_hat ~ q(x_0 | x_t): draws from the logits at masked positions, x_t elsewhere."""
        drawn = tokens.draw_tokens(x0_hat_logits, target_entropy=self.target_entropy, key=key)
        return jnp.where(xt == self.mask_id, drawn.astype(xt.dtype), xt)

    def correct(self, t, s, xt: Array, x0_hat_logits: Array, *, sigma_tilde, key) -> Array:
        """x_s ~ p(x_s | x_t, x_0 = x0_hat) with x0_hat ~ q(x_0 | x_t), for s < t.

        x_s = F_s(x0_hat, eps'), eps' inferred from the mask of x_t (sigma_tilde = 0, improved)
        or fresh (sigma_tilde = 1, baseline); see the module docstring and
        `tokens.refresh_rows`. The improved design needs x_t to hold exactly t masks (true
        along any trajectory from `prior` or `forward`).

        Args:
          t, s: scalar ints, 0 <= s < t <= l.
          xt: int [..., l] with t masks.
          x0_hat_logits: [..., l, V] logits of q(x_0 | x_t).
          sigma_tilde: scalar in [0, 1]; each sequence uses fresh priorities with this probability.
          key: PRNG key.
        Returns:
          x_s, int [..., l] with s masks.
        """
        tokens.check_time(s, self.num_timesteps)
        tokens.check_tokens("xt", xt, self.seq_len)
        tokens.check_logits("x0_hat_logits", x0_hat_logits, self.seq_len, self.vocab_size)
        estimate_key, coin_key, inferred_key, fresh_key = jax.random.split(key, 4)
        x0_hat = self.estimate(xt, x0_hat_logits, key=estimate_key)
        inferred = tokens.inferred_priority(self.invert(t, x0_hat, xt), key=inferred_key)
        fresh = self.sample_eps(fresh_key, xt.shape)
        refresh = tokens.refresh_rows(sigma_tilde, xt.shape[:-1], key=coin_key)
        return self.forward(s, x0_hat, tokens.select_rows(refresh, fresh, inferred))

    # --- training (docs/udm.md A4) ------------------------------------------------------------

    def check_weighting(self, weighting: str) -> None:
        check_no_weighting("masking", weighting)

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(loss, loss) of one example: mean token cross-entropy over the t masked positions.

        Args:
          t: scalar int in [1, l].
          x0: int [l]; eps: [l] priorities; output: [l, V] logits.
        """
        self.check_weighting(weighting)
        masked = tokens.corrupted_positions(t, eps)
        nll = tokens.token_cross_entropy(output, x0)
        count = jnp.maximum(jnp.sum(masked, axis=-1), 1)
        ce = jnp.sum(jnp.where(masked, nll, 0.0), axis=-1) / count
        return ce, ce


def masking(seq_len: int, vocab_size: int, *, target_entropy: Optional[float] = None
            ) -> MaskingProcess:
    """The masking model of docs/processes.md (B4) with T = seq_len; [MASK] = vocab_size."""
    return MaskingProcess(seq_len, vocab_size, target_entropy)
