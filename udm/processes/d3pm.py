"""D3PM: per-token discrete diffusion with uniform or absorbing transition matrices (docs/processes.md C2).

Forward, per token (Austin et al., "Structured Denoising Diffusion Models in Discrete
State-Spaces", arXiv 2107.03006):

    q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t),   Q_t = (1 - beta_t) I + beta_t 1 m^T,
    q(x_t | x_0)     = Cat(x_0 Q_bar_t),
    Q_bar_t = Q_1 ... Q_t = alpha_bar_t I + (1 - alpha_bar_t) 1 m^T,

with alpha_bar_t = prod_{i<=t} (1 - beta_i) and m the noise distribution: uniform m = 1/K
("uniform"), or m = e_MASK ("absorbing"). Matrices of this form are closed under products
(m^T 1 = 1), so the multi-step matrix Q_{s->t} = Q_{s+1} ... Q_t has the same form with keep
probability alpha_bar_t / alpha_bar_s; nothing here builds a K x K matrix except the reference
helpers `transition_matrix` / `cumulative_matrix`.

State space and network sizes:
  * "uniform": K = vocab_size states, the network reads ids in [0, K) and outputs K logits.
  * "absorbing": the data tokens are 0..vocab_size - 1 and MASK = vocab_size is an EXTRA id, so
    K = num_states = vocab_size + 1. The network reads ids in [0, vocab_size + 1) and outputs
    logits over x_0, i.e. over the vocab_size data tokens; an output with vocab_size + 1 logits
    (a transformer whose input and output vocabularies are equal) is accepted as well and its
    MASK logit is dropped, since x_0 is never MASK.

In UDM terms (docs/udm.md A1-A8): eps is one uniform u ~ U[0, 1) per token and
F_t(x_0, u) = x_0 if u < alpha_bar_t else a noise token drawn from m by the same u (inverse CDF),
so x_t ~ Cat(x_0 Q_bar_t) exactly. The estimate p(x_0 | x_t) is the network's logits; the correct
step is the posterior mixture p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t) (A2;
sigma_tilde = 0, "improved") or the UDM baseline x_s ~ q(x_s | x0_hat), x0_hat ~ p(x_0 | x_t)
(sigma_tilde = 1).

D3PM's own parameterisation, p(x_s | x_t) ∝ sum_{x_0} q(x_s, x_t | x_0) p~(x_0 | x_t), weighs each
x_0 by an extra q(x_t | x_0) = q(x_s, x_t | x_0) / q(x_s | x_t, x_0). It equals (A2) when p~ is
one-hot or q(x_t | x_0) does not depend on x_0 (absorbing: x_t = MASK, or x_t = x_0), but for
uniform noise and a calibrated p(x_0 | x_t), such as udm's cross-entropy-trained network or the
exact posterior, it is biased towards the noise distribution (tests/test_d3pm.py measures this).
`reverse="d3pm"` keeps the paper's form for networks trained through it (D3PM's hybrid loss).
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from udm.registry import Registry
from udm.processes.base import Capabilities, DiscreteTime

Array = Any

KINDS = ("uniform", "absorbing")
REVERSE_FORMS = ("udm", "d3pm")  # the exact posterior mixture (A2), or D3PM's parameterisation

# Per-t weights of the x_0 cross-entropy; only the plain objective (A4) for now.
D3PM_WEIGHTINGS = Registry("D3PM loss weighting")
D3PM_WEIGHTINGS.register("none")("none")

# --- schedules: alpha_bar_t = P(x_t = x_0 kept | x_0), t = 0..T, float64, alpha_bar_0 = 1 ------

D3PM_SCHEDULES = Registry("D3PM schedule")


@D3PM_SCHEDULES.register("cosine")
def cosine_schedule(num_timesteps: int, offset: float = 0.008) -> np.ndarray:
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), s = 0.008.

    The cumulative keep probability of Hoogeboom et al.'s multinomial diffusion (arXiv
    2102.05379), which D3PM uses for its uniform transitions; alpha_bar_T ~ 0 (= 0 to ~1e-33).
    """
    t = np.arange(num_timesteps + 1, dtype=np.float64)
    f = np.cos((t / num_timesteps + offset) / (1.0 + offset) * np.pi / 2) ** 2
    return np.clip(f / f[0], 0.0, 1.0)


@D3PM_SCHEDULES.register("linear")
def linear_schedule(num_timesteps: int) -> np.ndarray:
    """beta_t = 1 / (T - t + 1), so alpha_bar_t = prod_{i<=t} (T - i) / (T - i + 1) = 1 - t/T.

    D3PM's absorbing ("mutual information") schedule: the corruption probability grows linearly
    and alpha_bar_T = 0 exactly.
    """
    t = np.arange(1, num_timesteps + 1, dtype=np.float64)
    beta = 1.0 / (num_timesteps - t + 1.0)
    return np.concatenate([[1.0], np.cumprod(1.0 - beta)])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class D3PMProcess(DiscreteTime):
    """x_t ~ Cat(x_0 Q_bar_t) per token, Q_bar_t = alpha_bar_t I + (1 - alpha_bar_t) 1 m^T.

    Token sequences are int32 [..., l]; a method's time t is one scalar int in 0..T shared by all
    arrays it touches (per-example times: `jax.vmap`).

    Attributes:
      alpha_bar: [T + 1] keep probabilities, alpha_bar_0 = 1, non-increasing.
      vocab_size: V, the number of data tokens (and of x_0 logits).
      seq_len: l, the sequence length.
      kind: "uniform" (m = 1/V over V states) or "absorbing" (m = e_MASK, MASK = V, V + 1 states).
      reverse: "udm" (the posterior mixture of A2) or "d3pm" (the paper's parameterisation);
        see the module docstring.
    """

    alpha_bar: Array
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    seq_len: int = dataclasses.field(metadata=dict(static=True))
    kind: str = dataclasses.field(default="uniform", metadata=dict(static=True))
    reverse: str = dataclasses.field(default="udm", metadata=dict(static=True))

    def __post_init__(self):
        if self.reverse not in REVERSE_FORMS:
            raise ValueError(f"reverse must be one of {', '.join(REVERSE_FORMS)}, "
                             f"got {self.reverse!r}")

    @property
    def capabilities(self) -> Capabilities:
        """Token process; `absorbing` (MASK is never left, the other tokens never change) for the
        absorbing kind only."""
        return Capabilities(tokens=True, absorbing=self.kind == "absorbing")

    # --- sizes ---------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        return self.alpha_bar.shape[0] - 1

    @property
    def num_states(self) -> int:
        """K: the number of ids x_t can take (the network's input vocabulary)."""
        return self.vocab_size + (self.kind == "absorbing")

    @property
    def num_input_tokens(self) -> int:
        """The network's input vocabulary (every token process has this property)."""
        return self.num_states

    @property
    def mask_id(self) -> int:
        """The MASK id of the absorbing kind (= vocab_size, an extra id)."""
        if self.kind != "absorbing":
            raise ValueError(f"a {self.kind!r} D3PM process has no MASK id")
        return self.vocab_size

    def noise_distribution(self) -> Array:
        """m: [K] the distribution a corrupted token is drawn from."""
        if self.kind == "uniform":
            return jnp.full((self.num_states,), 1.0 / self.num_states, jnp.float32)
        return jax.nn.one_hot(self.mask_id, self.num_states, dtype=jnp.float32)

    # --- explicit matrices (reference, small K) ------------------------------------------

    def beta(self, t) -> Array:
        """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, for t >= 1."""
        return 1.0 - self.alpha_bar[t] / self.alpha_bar[t - 1]

    def transition_matrix(self, t) -> Array:
        """Q_t = (1 - beta_t) I + beta_t 1 m^T: [K, K], rows indexed by x_{t-1}."""
        return self._matrix(1.0 - self.beta(t))

    def cumulative_matrix(self, t) -> Array:
        """Q_bar_t = alpha_bar_t I + (1 - alpha_bar_t) 1 m^T: [K, K], rows indexed by x_0."""
        return self._matrix(self.alpha_bar[t])

    def _matrix(self, keep) -> Array:
        eye = jnp.eye(self.num_states, dtype=jnp.float32)
        return keep * eye + (1.0 - keep) * self.noise_distribution()[None, :]

    # --- forward corruption (docs/udm.md A1; docs/processes.md C2) -----------------------

    def sample_eps(self, key, shape, dtype=jnp.int32) -> Array:
        """eps ~ U[0, 1)^shape, one uniform per token: float32 [B, l] whatever `dtype`.

        `dtype` is the dtype of the tokens x_0 (what generic callers such as
        `udm.losses.make_loss_fn` pass); it is accepted for the common interface only.
        """
        del dtype
        return jax.random.uniform(key, shape, jnp.float32)

    def forward(self, t, x0: Array, eps: Array) -> Array:
        """x_t = F_t(x_0, u): x_0 where u < alpha_bar_t, else the noise token m^{-1}(v).

        With v = (u - alpha_bar_t) / (1 - alpha_bar_t) ~ U[0, 1) given that the token is
        corrupted, the noise token is floor(v K) (uniform) or MASK (absorbing); hence
        x_t ~ Cat(x_0 Q_bar_t) exactly.

        Args:
          t: scalar int in 0..T.
          x0: int [..., l] tokens in [0, vocab_size).
          eps: float [..., l] uniforms from `sample_eps`.
        Returns:
          x_t: int32 [..., l] in [0, num_states).
        """
        self._check_tokens(x0, "x0")
        if eps.shape != x0.shape:
            raise ValueError(f"eps must have the shape of x0 {x0.shape}, got {eps.shape}")
        a = self.alpha_bar[t]
        keep = eps < a
        if self.kind == "absorbing":
            noise = jnp.full(x0.shape, self.mask_id, jnp.int32)
        else:
            v = (eps - a) / jnp.maximum(1.0 - a, jnp.finfo(jnp.float32).tiny)
            noise = jnp.clip(jnp.floor(v * self.num_states), 0, self.num_states - 1)
            noise = noise.astype(jnp.int32)
        return jnp.where(keep, x0.astype(jnp.int32), noise)

    def prior(self, key, shape, dtype=jnp.int32) -> Array:
        """x_T ~ Cat(m): uniform tokens (uniform) or all MASK (absorbing); [B, l] of `dtype`."""
        if self.kind == "absorbing":
            return jnp.full(shape, self.mask_id, dtype)
        return jax.random.randint(key, shape, 0, self.num_states, dtype)

    # --- the estimate p(x_0 | x_t) ----------------------------------------------------------

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The estimate p(x_0 | x_t) IS the network's logits: [B, l, V] (MASK logit dropped)."""
        del t
        self._check_tokens(xt, "xt")
        return self._x0_logits(output, xt.shape)

    def _x0_logits(self, output: Array, token_shape) -> Array:
        """Checks output: [..., l, V] or [..., l, K] and returns the V logits over x_0."""
        if output.shape[:-1] != tuple(token_shape) or output.shape[-1] not in (
                self.vocab_size, self.num_states):
            sizes = sorted({self.vocab_size, self.num_states})
            raise ValueError(
                f"x_0 logits must have shape {tuple(token_shape)} + (V,) with V in {sizes}, "
                f"got {output.shape}")
        return output[..., :self.vocab_size]

    def _check_tokens(self, tokens: Array, name: str) -> None:
        if tokens.ndim < 1 or tokens.shape[-1] != self.seq_len:
            raise ValueError(f"{name} must be [..., l={self.seq_len}] tokens, got {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"{name} must hold integer token ids, got {tokens.dtype}")

    # --- the correct step (docs/udm.md A3, A6; docs/processes.md C2) -----------------------

    def reverse_log_probs(self, t, s, xt: Array, x0_logits: Array) -> Array:
        """log p(x_s | x_t) [..., l, K], p ∝ (x_t Q_{s->t}^T) ⊙ (w Q_bar_s).

        With q(x_s, x_t | x_0) = Q_bar_s[x_0, x_s] Q_{s->t}[x_s, x_t] and
        q(x_s | x_t, x_0) = q(x_s, x_t | x_0) / q(x_t | x_0), the posterior mixture (A2)
        sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t) is this product with weights
        w(x_0) = p(x_0 | x_t) / q(x_t | x_0) ("udm"; x_0 with q(x_t | x_0) = 0 are impossible and
        get w = 0), D3PM's parameterisation uses w = p(x_0 | x_t) ("d3pm"); with one-hot logits
        both are the multi-step posterior q(x_s | x_t, x_0). Closed forms, computed in log space
        so a peaked x_0 estimate cannot underflow to an all-zero row:
          (x_t Q_{s->t}^T)[x_s] = r [x_s = x_t] + (1 - r) m[x_t],   r = alpha_bar_t / alpha_bar_s,
          (w Q_bar_s)[x_s]      = alpha_bar_s w[x_s] + (1 - alpha_bar_s) m[x_s] sum(w),
          q(x_t | x_0)          = alpha_bar_t [x_0 = x_t] + (1 - alpha_bar_t) m[x_t].

        Args:
          t, s: scalar ints, 0 <= s < t <= T.
          xt: int [..., l] current tokens.
          x0_logits: [..., l, V] (or [..., l, K]) logits of p(x_0 | x_t).
        Returns:
          [..., l, K] log-probabilities over x_s. A row is undefined (NaN) only when x_t is
          impossible under the estimate: an unmasked token at t = T (absorbing; forward never
          makes one), or logits of -inf on every x_0 that could have produced x_t.
        """
        self._check_tokens(xt, "xt")
        x0_logits = self._x0_logits(x0_logits, xt.shape)
        log_p0 = jax.nn.log_softmax(x0_logits.astype(jnp.float32), axis=-1)
        if self.num_states > self.vocab_size:  # x_0 is never MASK
            pad = [(0, 0)] * (log_p0.ndim - 1) + [(0, self.num_states - self.vocab_size)]
            log_p0 = jnp.pad(log_p0, pad, constant_values=-jnp.inf)
        m = self.noise_distribution()
        a_s, a_t = self.alpha_bar[s], self.alpha_bar[t]
        r = a_t / a_s
        xt_onehot = jax.nn.one_hot(xt, self.num_states, dtype=jnp.float32)
        m_xt = m[xt][..., None]
        log_w = log_p0
        if self.reverse == "udm":  # divide by q(x_t | x_0); impossible x_0 get log w = -inf
            q_xt = a_t * xt_onehot + (1.0 - a_t) * m_xt
            log_w = jnp.where(q_xt > 0, log_p0 - jnp.log(jnp.where(q_xt > 0, q_xt, 1.0)),
                              -jnp.inf)
        log_total = jax.nn.logsumexp(log_w, axis=-1, keepdims=True)
        # log (w Q_bar_s)[x_s]
        m_row = m.reshape((1,) * (log_p0.ndim - 1) + (self.num_states,))
        log_marginal = jnp.logaddexp(jnp.log(a_s) + log_w,
                                     jnp.log((1.0 - a_s) * m_row) + log_total)
        # log (x_t Q_{s->t}^T)[x_s]
        log_likelihood = jnp.log(r * xt_onehot + (1.0 - r) * m_xt)
        return jax.nn.log_softmax(log_likelihood + log_marginal, axis=-1)

    def correct(self, t, s, xt: Array, x0_logits: Array, *, sigma_tilde, key) -> Array:
        """x_s ~ p(x_s | x_t) for any s < t (so time sub-sequences work).

        Per token, with probability 1 - sigma_tilde the D3PM reverse step ("improved",
        `reverse_log_probs`), with probability sigma_tilde the UDM baseline: x0_hat ~
        Cat(softmax(logits)), x_s = F_s(x0_hat, fresh u). Both kernels keep the marginals (A6)
        when the logits are the true x_0, so every mixture does too; sigma_tilde = 0 / 1 give the
        pure designs, and `jnp.where` keeps sigma_tilde traceable.

        Args:
          t, s: scalar ints, 0 <= s < t <= T.
          xt: int [B, l] current tokens.
          x0_logits: [B, l, V] logits of p(x_0 | x_t) (or [B, l, K], MASK logit dropped).
          sigma_tilde: scalar in [0, 1].
          key: PRNG key.
        Returns:
          x_s: int32 [B, l].
        """
        self._check_tokens(xt, "xt")
        x0_logits = self._x0_logits(x0_logits, xt.shape)
        choice_key, improved_key, x0_key, eps_key = jax.random.split(key, 4)
        improved = jax.random.categorical(
            improved_key, self.reverse_log_probs(t, s, xt, x0_logits), axis=-1)
        x0_hat = jax.random.categorical(x0_key, x0_logits.astype(jnp.float32), axis=-1)
        baseline = self.forward(s, x0_hat.astype(jnp.int32),
                                self.sample_eps(eps_key, xt.shape))
        fresh = jax.random.uniform(choice_key, xt.shape) < sigma_tilde
        return jnp.where(fresh, baseline, improved.astype(jnp.int32))

    # --- training loss (docs/udm.md A4) ----------------------------------------------------

    def check_weighting(self, weighting: str) -> None:
        D3PM_WEIGHTINGS.get(weighting)

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(w(t) ce, ce) of one example: ce = mean_l -log softmax(output)[x_0] (A4, x_0-param.).

        Args:
          t: scalar int (unused: the plain objective weighs every t the same).
          x0: int [l] clean tokens.
          eps: the forward randomness (unused; kept for the common loss interface).
          output: [l, V] (or [l, K]) logits of p(x_0 | x_t).
        """
        del t, eps
        self.check_weighting(weighting)
        self._check_tokens(x0, "x0")
        log_p0 = jax.nn.log_softmax(self._x0_logits(output, x0.shape).astype(jnp.float32), -1)
        ce = -jnp.mean(jnp.take_along_axis(log_p0, x0[..., None].astype(jnp.int32), -1))
        return ce, ce


def _build(kind: str, seq_len: int, vocab_size: int, num_timesteps: int,
           schedule: str, reverse: str = "udm") -> D3PMProcess:
    for field, value, low in (("seq_len", seq_len, 1), ("vocab_size", vocab_size, 2),
                              ("num_timesteps", num_timesteps, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{field} must be an int >= {low}, got {value!r}")
    alpha_bar = D3PM_SCHEDULES.get(schedule)(int(num_timesteps))
    return D3PMProcess(jnp.asarray(alpha_bar, jnp.float32), int(vocab_size), int(seq_len), kind,
                       reverse)


def d3pm_uniform(seq_len: int, vocab_size: int, num_timesteps: int,
                 schedule: str = "cosine", reverse: str = "udm") -> D3PMProcess:
    """D3PM with uniform transitions over V = vocab_size states.

    Args:
      seq_len: l.
      vocab_size: V >= 2; tokens, network inputs and logits all live in [0, V).
      num_timesteps: T.
      schedule: "cosine" (default, Hoogeboom et al.'s alpha_bar) or "linear"
        (beta_t = 1 / (T - t + 1), alpha_bar_t = 1 - t/T); see D3PM_SCHEDULES.
      reverse: "udm" (the posterior mixture, A2) or "d3pm" (the paper's parameterisation).
    """
    return _build("uniform", seq_len, vocab_size, num_timesteps, schedule, reverse)


def d3pm_absorbing(seq_len: int, vocab_size: int, num_timesteps: int,
                   reverse: str = "udm") -> D3PMProcess:
    """D3PM absorbing-state diffusion, beta_t = 1 / (T - t + 1), so P(x_t = MASK | x_0) = t/T.

    Data tokens are 0..vocab_size - 1; MASK = vocab_size is an extra id, so the network reads
    vocab_size + 1 ids and outputs vocab_size logits (vocab_size + 1 also accepted). The two
    `reverse` forms coincide for this kind (q(x_t | x_0) is the same for every possible x_0).
    """
    return _build("absorbing", seq_len, vocab_size, num_timesteps, "linear", reverse)
