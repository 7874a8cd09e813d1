"""Noise schedules: the signal coefficients alpha_bar_t, t = 0..T, of p(x_t|x_0) = N(alpha_bar_t x_0, beta_bar_t^2 I).

Blog notation (docs/notation.md): alpha_bar_t is the signal coefficient itself (NOT its square),
beta_bar_t = sqrt(1 - alpha_bar_t^2) the noise standard deviation, alpha_bar_0 = 1.
Every schedule returns a float64 numpy array of length T + 1; processes cast it once.
"""
import numpy as np

from udm.registry import Registry

SCHEDULES = Registry("schedule")


def _from_one_step(alphas: np.ndarray) -> np.ndarray:
    """alpha_bar_t = prod_{i<=t} alpha_i with alpha_bar_0 = 1 (docs/ddpm_ddim.md D2)."""
    return np.concatenate([[1.0], np.cumprod(alphas)])


@SCHEDULES.register("blog")
def blog(num_timesteps: int) -> np.ndarray:
    """The posts' default: alpha_t = sqrt(1 - 0.02 t / T) (paper-beta linear from 2e-5 to 0.02)."""
    t = np.arange(1, num_timesteps + 1, dtype=np.float64)
    return _from_one_step(np.sqrt(1.0 - 0.02 * t / num_timesteps))


@SCHEDULES.register("linear")
def linear(num_timesteps: int) -> np.ndarray:
    """DDPM paper: paper-beta_t linear from 1e-4 to 0.02 (scaled to T = 1000), alpha_t = sqrt(1 - beta_t)."""
    scale = 1000.0 / num_timesteps
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    return _from_one_step(np.sqrt(1.0 - betas))


@SCHEDULES.register("cosine")
def cosine(num_timesteps: int, offset: float = 0.008) -> np.ndarray:
    """Improved-DDPM cosine schedule: alpha_bar_t^2 = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2).

    As in Nichol & Dhariwal (arXiv 2102.09672), paper-beta_t is clipped at 0.999 so the last
    step stays invertible.
    """
    t = np.arange(num_timesteps + 1, dtype=np.float64)
    f = np.cos((t / num_timesteps + offset) / (1.0 + offset) * np.pi / 2) ** 2
    abar_sq = f / f[0]
    betas = np.clip(1.0 - abar_sq[1:] / abar_sq[:-1], 0.0, 0.999)
    return _from_one_step(np.sqrt(1.0 - betas))


def rescale_zero_terminal_snr(alpha_bar: np.ndarray) -> np.ndarray:
    """Lin et al.'s zero-terminal-SNR rescale (arXiv 2305.08891, Algorithm 1; docs/time_grids.md (G5)).

    alpha_bar_t for t = 1..T is shifted and scaled, alpha_bar_t <- (alpha_bar_t - alpha_bar_T)
    alpha_bar_1 / (alpha_bar_1 - alpha_bar_T), so alpha_bar_1 is unchanged and alpha_bar_T = 0
    exactly (an affine map with a positive slope: still decreasing). alpha_bar_0 = 1 stays.

    Args:
      alpha_bar: [T + 1] signal coefficients, T >= 2.
    Returns:
      [T + 1] float64, the last entry 0.
    """
    alpha_bar = np.asarray(alpha_bar, np.float64)
    if alpha_bar.shape[0] < 3:
        raise ValueError("the zero-terminal-SNR rescale needs T >= 2 (it keeps alpha_bar_1 and "
                         "zeroes alpha_bar_T)")
    first, last = alpha_bar[1], alpha_bar[-1]
    rescaled = (alpha_bar[1:] - last) * (first / (first - last))
    rescaled[0], rescaled[-1] = first, 0.0  # exactly, whatever the rounding
    return np.concatenate([[1.0], rescaled])


def get_alpha_bar(name: str, num_timesteps: int, *, zero_terminal_snr: bool = False) -> np.ndarray:
    """Looks a schedule up by name and checks it is a valid, decreasing signal coefficient.

    zero_terminal_snr: rescale it so that alpha_bar_T = 0 (`rescale_zero_terminal_snr`).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    alpha_bar = SCHEDULES.get(name)(num_timesteps)
    if zero_terminal_snr:
        alpha_bar = rescale_zero_terminal_snr(alpha_bar)
    assert alpha_bar.shape == (num_timesteps + 1,) and alpha_bar[0] == 1.0
    assert np.all(np.diff(alpha_bar) < 0)
    assert alpha_bar[-1] == 0 if zero_terminal_snr else alpha_bar[-1] > 0
    return alpha_bar
