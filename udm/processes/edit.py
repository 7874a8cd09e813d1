"""Edit model: F_t substitutes t of the l tokens (docs/processes.md B3), T = l.

eps = (priority, replacement): one uniform priority per position (the t smallest are edited,
udm.processes.tokens) and one replacement draw per position.
  version 1: replacement ~ U{0..V-1} is the new token (it may equal the old one), so
    d_H(x_0, x_t) <= t and the corruption cannot be read off (x_0, x_t): only the baseline
    correct step exists.
  version 2: replacement = offset ~ U{1..V-1}, new token = (x_0 + offset) mod V, uniform over the
    tokens != x_0, so d_H(x_0, x_t) = t exactly and invert recovers positions and offsets.

The correct step x_t -> x_s (s < t):
  estimate (v2, our implementation choice of docs/processes.md B3): with q_i = softmax(logits_i), score
    r_i = 1 - q_i(x_{t,i}), take the t positions with the largest r_i (ties broken at random),
    and draw their tokens from q_i restricted to tokens != x_{t,i}; elsewhere x0_hat = x_t.
    So x0_hat differs from x_t in exactly t positions, as x_0 does. v1 draws x0_hat ~ q freely.
  correct: x_s = F_s(x0_hat, eps'), eps' fresh (sigma_tilde = 1, baseline) or, v2 only, inferred
    from (x0_hat, x_t) (sigma_tilde = 0): keep s of the t edited positions at their x_t tokens,
    i.e. restore t - s of them, chosen uniformly, to x0_hat.
On the full chain the improved v2 step changes exactly one token per step.
"""
import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from udm.processes import tokens
from udm.processes.base import Capabilities, DiscreteTime, check_no_weighting

Array = Any


class EditNoise(NamedTuple):
    """eps of the edit model.

    priority: float [..., l], U[0, 1); the t smallest are edited at time t.
    replacement: int [..., l]; v1: the new token in [0, V); v2: the offset in [1, V).
    """
    priority: Array
    replacement: Array


class Substitution(NamedTuple):
    """What v2's invert reads off (x_0, x_t): where x_t differs and by which offset mod V."""
    positions: Array  # bool [..., l], x_t != x_0
    offset: Array     # int [..., l], (x_t - x_0) mod V (0 where unchanged)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EditProcess(DiscreteTime):
    """x_t = x_0 with its t lowest-priority positions substituted (v1: any token; v2: another).

    Attributes:
      seq_len: l = T, the fixed sequence length.
      vocab_size: V (>= 2 for version 2, which needs a different token to exist).
      version: 1 (non-invertible) or 2 (invertible, recommended).
      target_entropy: None samples tokens from q itself; a value H* (nats) samples from the
        entropy-normalised q (udm.entropy.sample_with_entropy).
    """

    capabilities = Capabilities(tokens=True)

    seq_len: int = dataclasses.field(metadata=dict(static=True))
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    version: int = dataclasses.field(default=2, metadata=dict(static=True))
    target_entropy: Optional[float] = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        tokens.check_positive_int("seq_len", self.seq_len)
        if self.version not in (1, 2) or isinstance(self.version, bool):
            raise ValueError(f"version must be 1 or 2, got {self.version!r}")
        tokens.check_positive_int("vocab_size", self.vocab_size,
                                  minimum=2 if self.version == 2 else 1)
        if self.target_entropy is not None and not self.target_entropy >= 0:
            raise ValueError(f"target_entropy must be None or >= 0 nats, got {self.target_entropy}")

    @property
    def num_timesteps(self) -> int:
        return self.seq_len

    @property
    def num_input_tokens(self) -> int:
        return self.vocab_size

    # --- forward corruption and its inverse (docs/udm.md A1; docs/processes.md B3) ---------

    def sample_eps(self, key, shape, dtype=jnp.int32) -> EditNoise:
        """eps ~ q(eps): priorities U[0, 1) and replacements (v1: U{0..V-1}, v2: U{1..V-1})."""
        if len(shape) < 1 or shape[-1] != self.seq_len:
            raise ValueError(f"shape must be [..., l={self.seq_len}], got {tuple(shape)}")
        priority_key, replacement_key = jax.random.split(key)
        low = 0 if self.version == 1 else 1
        return EditNoise(
            priority=jax.random.uniform(priority_key, shape, jnp.float32),
            replacement=jax.random.randint(replacement_key, shape, low, self.vocab_size, dtype))

    def _new_tokens(self, x0: Array, replacement: Array) -> Array:
        if self.version == 1:
            return replacement.astype(x0.dtype)
        return ((x0 + replacement) % self.vocab_size).astype(x0.dtype)

    def forward(self, t, x0: Array, eps: EditNoise) -> Array:
        """x_t = F_t(x_0, eps): the t lowest-priority positions get their replacement token.

        Args:
          t: scalar int in [0, l].
          x0: int [..., l] tokens in [0, V).
          eps: EditNoise from `sample_eps`.
        """
        tokens.check_time(t, self.num_timesteps)
        tokens.check_tokens("x0", x0, self.seq_len)
        edited = tokens.corrupted_positions(t, eps.priority)
        return jnp.where(edited, self._new_tokens(x0, eps.replacement), x0)

    def invert(self, t, x0: Array, xt: Array) -> Substitution:
        """v2 only: the substituted positions (x_t != x_0) and offsets (x_t - x_0) mod V.

        At the edited positions the offsets equal eps.replacement; the priorities are only known
        through which t of them are the smallest, which is all F_s needs for s <= t.
        """
        del t
        if self.version != 2:
            raise ValueError("the version-1 edit corruption is not invertible (a substituted "
                             "token may equal the original); use version=2")
        tokens.check_tokens("x0", x0, self.seq_len)
        tokens.check_tokens("xt", xt, self.seq_len)
        positions = xt != x0
        offset = jnp.where(positions, (xt - x0) % self.vocab_size, 0)
        return Substitution(positions, offset.astype(xt.dtype))

    def prior(self, key, shape, dtype=jnp.int32) -> Array:
        """x_T: l uniform random tokens (v1: exactly p(x_T | x_0); v2: the usual stand-in)."""
        if len(shape) < 1 or shape[-1] != self.seq_len:
            raise ValueError(f"shape must be [..., l={self.seq_len}], got {tuple(shape)}")
        return jax.random.randint(key, shape, 0, self.vocab_size, dtype)

    # --- estimate and correct (docs/udm.md A3, A8; docs/processes.md B3) ---------------------

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The estimate of q(x_0 | x_t) is the network's logits [..., l, V] themselves."""
        del t, xt
        return output

    def estimate(self, t, xt: Array, x0_hat_logits: Array, *, key) -> Array:
        """x0_hat ~ q(x_0 | x_t); for v2 constrained to differ from x_t in exactly t positions.

        The t positions are those least likely to hold the right token, i.e. the largest
        r_i = 1 - q_i(x_{t,i}); ranked by log q_i(x_{t,i}) (same order, no rounding of 1 - q to 1),
        ties broken uniformly at random.
        """
        order_key, token_key = jax.random.split(key)
        if self.version == 1:
            drawn = tokens.draw_tokens(x0_hat_logits, target_entropy=self.target_entropy,
                                       key=token_key)
            return drawn.astype(xt.dtype)
        log_q = jax.nn.log_softmax(x0_hat_logits.astype(jnp.float32), axis=-1)
        log_q_current = jnp.take_along_axis(log_q, xt[..., None], axis=-1)[..., 0]
        tie_break = jax.random.uniform(order_key, xt.shape, jnp.float32)
        order = jnp.lexsort((tie_break, log_q_current), axis=-1)  # ascending q_i(x_t,i)
        edited = jnp.argsort(order, axis=-1) < t
        drawn = tokens.draw_tokens(x0_hat_logits, exclude=xt, target_entropy=self.target_entropy,
                                   key=token_key)
        return jnp.where(edited, drawn.astype(xt.dtype), xt)

    def correct(self, t, s, xt: Array, x0_hat_logits: Array, *, sigma_tilde, key) -> Array:
        """x_s ~ p(x_s | x_t, x_0 = x0_hat) with x0_hat from `estimate`, for s < t.

        x_s = F_s(x0_hat, eps'): eps' fresh (sigma_tilde = 1, the baseline) or, for v2, inferred
        from (x0_hat, x_t) (sigma_tilde = 0: x_s is x_t with t - s of its t edits, chosen
        uniformly, undone to x0_hat); each sequence uses fresh eps with probability sigma_tilde.
        Version 1 is not invertible, so it always takes the baseline: a concrete sigma_tilde
        other than 1 is refused; a traced one is ignored.

        Args:
          t, s: scalar ints, 0 <= s < t <= l.
          xt: int [..., l].
          x0_hat_logits: [..., l, V] logits of q(x_0 | x_t).
          sigma_tilde: scalar in [0, 1].
          key: PRNG key.
        Returns:
          x_s, int [..., l].
        """
        tokens.check_time(s, self.num_timesteps)
        tokens.check_tokens("xt", xt, self.seq_len)
        tokens.check_logits("x0_hat_logits", x0_hat_logits, self.seq_len, self.vocab_size)
        if (self.version == 1 and not isinstance(sigma_tilde, jax.core.Tracer)
                and float(sigma_tilde) != 1.0):
            raise ValueError("the version-1 edit model only has the baseline correct step "
                             f"(sigma_tilde = 1), got sigma_tilde={float(sigma_tilde)}")
        estimate_key, coin_key, inferred_key, fresh_key = jax.random.split(key, 4)
        x0_hat = self.estimate(t, xt, x0_hat_logits, key=estimate_key)
        fresh = self.sample_eps(fresh_key, xt.shape, xt.dtype)
        if self.version == 1:
            return self.forward(s, x0_hat, fresh)
        substitution = self.invert(t, x0_hat, xt)
        # Offsets are 0 off the edited set, whose priorities (>= 1/2) never come up for s < t.
        inferred = EditNoise(tokens.inferred_priority(substitution.positions, key=inferred_key),
                             substitution.offset)
        refresh = tokens.refresh_rows(sigma_tilde, xt.shape[:-1], key=coin_key)
        return self.forward(s, x0_hat, tokens.select_rows(refresh, fresh, inferred))

    # --- training (docs/udm.md A4) ------------------------------------------------------------

    def check_weighting(self, weighting: str) -> None:
        check_no_weighting("edit", weighting)

    def loss(self, t, x0: Array, eps: EditNoise, output: Array, *, weighting: str = "none"):
        """(loss, loss) of one example: mean token cross-entropy over all l positions.

        Args:
          t: scalar int in [1, l]; x0: int [l]; eps: EditNoise of [l]; output: [l, V] logits.
        """
        del t, eps
        self.check_weighting(weighting)
        ce = jnp.mean(tokens.token_cross_entropy(output, x0), axis=-1)
        return ce, ce


def edit(seq_len: int, vocab_size: int, version: int = 2, *,
         target_entropy: Optional[float] = None) -> EditProcess:
    """The edit model of docs/processes.md (B3) with T = seq_len (version 2 recommended)."""
    return EditProcess(seq_len, vocab_size, version, target_entropy)
