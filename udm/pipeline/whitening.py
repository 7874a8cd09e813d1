"""The (beta, gamma, k) whitening table as a pipeline: config -> spec -> tasks -> scores.

docs/whitening.md §7. `from_config(config)` turns `configs/whitening.py` into a frozen, typed
`Spec` and refuses bad values before anything is encoded, naming the field. Below it no function
takes a ConfigDict:

    spec = from_config(config)
    m = measure(spec, cache_dir="workdir/whitening/embeddings")   # a `Measurement`

`measure` builds the tasks (the Lee documents, and an STS-Benchmark file when given), encodes
every text once per pooling with all-MiniLM-L6-v2 (`udm.sentence_encoder`, cached as .npz in
`cache_dir`), fits the whitening (W1, `udm.whitening`) on each fitting set of the task
(docs/whitening.md §3) and returns plain numbers: Spearman x 100 of every (beta, gamma, k) cell,
the post's `a / b / c` rows and the hubness (`udm.hubness`) of the fitted vectors before and
after whitening. Tables, plots and files are the caller's
(`experiments/reproduce_whitening_table.py`).

The whitening is fitted and applied in float64 (`jax.enable_x64` around that part only; the
encoder runs in float32): the Lee fit has N = 350 < D = 384, so 35 or more eigenvalues sit at
the floor eps * lambda_max and are scaled by up to eps^{-1/2} = 10^6 at gamma = 1; float32
rounding in those directions would then swamp the signal, and float64 also keeps the
beta = gamma = 0, k = D cells equal to the raw ones (a rotation) to ~1e-12.
"""
import dataclasses
import hashlib
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn, a udm dependency

from udm import hubness
from udm import whitening as wh
from udm.data.similarity import (LEE_NUM_BACKGROUND, LEE_NUM_DOCUMENTS, load_lee_similarity,
                                 load_sts_tsv)
from udm.metrics.similarity import spearman_x100
from udm.pipeline.spec import _section
from udm.sentence_encoder import POOLINGS, SentenceEncoder, model_dir

MODEL = "all-MiniLM-L6-v2"
MODEL_DIM = 384                          # its hidden size D
CORNERS = ((1.0, 1.0), (0.0, 0.0))       # (beta, gamma) of the post's two rows


# --- the spec ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which texts: an STS file ("" = none), the Lee fits and subset sizes (0 = all rated)."""
    sts_path: str
    lee_fit: str
    lee_fit_ablation: Tuple[str, ...]
    lee_num_documents: int
    lee_num_background: int


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """`SentenceEncoder` settings: word-piece limits (Lee, STS), batch, poolings."""
    max_length: int
    sts_max_length: int
    batch_size: int
    normalize: bool
    poolings: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class WhiteningSpec:
    """Kept dimensions, the k of the `c` cells, the (beta, gamma) grid, the eigenvalue floor."""
    ks: Tuple[int, ...]
    main_k: int
    grid: Tuple[float, ...]
    eps: float


@dataclasses.dataclass(frozen=True)
class HubnessSpec:
    k: int
    metric: str


@dataclasses.dataclass(frozen=True)
class Spec:
    """The whitening table, typed. `record` is the config as a dict, for the results file."""
    data: DataSpec
    encoder: EncoderSpec
    whitening: WhiteningSpec
    hubness: HubnessSpec
    record: Dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


_SECTIONS = dict(data=DataSpec, encoder=EncoderSpec, whitening=WhiteningSpec,
                 hubness=HubnessSpec)


def from_config(config) -> Spec:
    """The typed Spec of a `configs/whitening.py` config, validated (ValueError names the field)."""
    values = config.to_dict()
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}")
    spec = Spec(record=values,
                **{name: _section(cls, name, values[name]) for name, cls in _SECTIONS.items()})
    validate(spec)
    return spec


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _lee_sizes(data: DataSpec) -> Tuple[int, int]:
    """(rated documents, background documents) of the Lee task."""
    return data.lee_num_documents or LEE_NUM_DOCUMENTS, data.lee_num_background


def _lee_fits(n: int, m: int) -> Dict[str, np.ndarray]:
    """Fit name -> indices into the Lee texts (the n rated documents, then m background ones)."""
    return {"all": np.arange(n + m), "background": np.arange(n, n + m), "rated": np.arange(n)}


def validate(spec: Spec) -> None:
    """Refuses every bad value before any text is read or encoded, naming the config field."""
    poolings = spec.encoder.poolings
    unknown = [p for p in poolings if p not in POOLINGS]
    _check(bool(poolings) and not unknown,
           f"config.encoder.poolings: unknown {unknown}; valid: {', '.join(POOLINGS)}")
    wc = spec.whitening
    for name in ("ks", "grid"):
        _check(len(getattr(wc, name)), f"config.whitening.{name} must not be empty")
    for v in wc.grid:
        _check(0.0 <= v <= 1.0, f"config.whitening.grid values must be in [0, 1], got {v}")
    for k in wc.ks:
        _check(1 <= k <= MODEL_DIM, f"config.whitening.ks must be in [1, D={MODEL_DIM}], got {k}")
    _check(wc.main_k in wc.ks, f"config.whitening.main_k={wc.main_k} must be one of "
                               f"config.whitening.ks={tuple(wc.ks)}")
    _check(spec.hubness.k >= 1, f"config.hubness.k must be >= 1, got {spec.hubness.k}")
    _check(spec.hubness.metric in hubness.METRICS,
           f"config.hubness.metric must be one of {hubness.METRICS}")
    n, m = _lee_sizes(spec.data)
    _check(2 <= n <= LEE_NUM_DOCUMENTS, f"config.data.lee_num_documents must be 0 or in "
                                        f"[2, {LEE_NUM_DOCUMENTS}], got {n}")
    _check(0 <= m <= LEE_NUM_BACKGROUND, f"config.data.lee_num_background must be in "
                                         f"[0, {LEE_NUM_BACKGROUND}], got {m}")
    fits = _lee_fits(n, m)
    for name in (spec.data.lee_fit, *spec.data.lee_fit_ablation):
        _check(name in fits, f"config.data.lee_fit / lee_fit_ablation: unknown fit {name!r}; "
                             f"valid: {', '.join(fits)}")
        _check(len(fits[name]) >= 2, f"config.data.lee_fit / lee_fit_ablation: Lee fit "
                                     f"{name!r} has {len(fits[name])} texts: need >= 2")
    path = spec.data.sts_path
    _check(not path or os.path.isfile(path), f"config.data.sts_path: no such file {path!r}")


# --- tasks ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """Texts to encode, their labelled pairs, and which texts each whitening is fitted on."""
    name: str
    description: str
    texts: List[str]
    pairs: np.ndarray                 # int [P, 2] into texts
    gold: np.ndarray                  # [P]
    fits: Dict[str, np.ndarray]       # fit name -> int indices into texts (first = main fit)
    max_length: int

    @property
    def main_fit(self) -> str:
        return next(iter(self.fits))


def lee_task(data: DataSpec, max_length: int) -> Task:
    """The first n rated Lee documents (their pairs), then m background ones; fits by name."""
    lee = load_lee_similarity()
    n, m = _lee_sizes(data)
    keep = (lee.pairs[:, 0] < n) & (lee.pairs[:, 1] < n)
    fits = _lee_fits(n, m)
    names = [data.lee_fit, *data.lee_fit_ablation]
    return Task("lee", f"Lee et al. (2005): {n} news documents, {int(keep.sum())} rated pairs, "
                f"+ {m} background documents", list(lee.texts[:n]) + list(lee.background[:m]),
                lee.pairs[keep], lee.gold[keep], {name: fits[name] for name in names},
                max_length)


def sts_task(path: str, max_length: int) -> Task:
    """The pairs of an STS-Benchmark file, fitted on all its distinct sentences (§3)."""
    sts = load_sts_tsv(path)
    return Task("sts", f"STS-Benchmark file {os.path.basename(path)}: {len(sts.pairs)} pairs, "
                f"{len(sts.texts)} distinct sentences", list(sts.texts), sts.pairs,
                np.asarray(sts.gold, np.float64), {"all": np.arange(len(sts.texts))}, max_length)


def tasks_of(spec: Spec) -> List[Task]:
    """Lee, then STS when config.data.sts_path is set."""
    tasks = [lee_task(spec.data, spec.encoder.max_length)]
    if spec.data.sts_path:
        tasks.append(sts_task(spec.data.sts_path, spec.encoder.sts_max_length))
    return tasks


def length_stats(task: Task) -> Dict[str, Any]:
    """How many texts the word-piece limit cuts: untruncated lengths ([CLS], [SEP] included)."""
    import tokenizers
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    lens = np.array([len(e.ids) for e in tokenizer.encode_batch(task.texts)])
    stats = dict(max_length=task.max_length, texts=len(lens),
                 truncated=int((lens > task.max_length).sum()), median=float(np.median(lens)),
                 max=int(lens.max()))
    if task.name == "lee":
        n_rated = int(task.pairs.max()) + 1
        stats["truncated_rated"] = int((lens[:n_rated] > task.max_length).sum())
    return stats


def encode_cached(task: Task, pooling: str, *, cache_dir: str, batch_size: int,
                  normalize: bool, encoders: Optional[dict] = None) -> np.ndarray:
    """[N, 384] float32 vectors of task.texts, read from `cache_dir` when encoded before.

    The file name hashes the model, pooling, word-piece limit, normalisation and texts.
    `encoders` (max_length -> SentenceEncoder) keeps loaded encoders across calls.
    """
    encoders = {} if encoders is None else encoders
    key = hashlib.sha1("\x00".join([MODEL, pooling, str(task.max_length), str(normalize),
                                    *task.texts]).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{task.name}_{pooling}_{key}.npz")
    if os.path.exists(path):
        with np.load(path) as data:
            return data["vectors"]
    if task.max_length not in encoders:
        encoders[task.max_length] = SentenceEncoder.from_package(max_length=task.max_length)
    start = time.perf_counter()
    vectors = encoders[task.max_length].encode(task.texts, pooling=pooling, batch_size=batch_size,
                                               normalize=normalize, progress=False)
    print(f"encoded {len(task.texts)} {task.name} texts, pooling {pooling}: "
          f"{time.perf_counter() - start:.1f} s")
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, vectors=vectors)
    os.replace(path + ".tmp", path)
    return vectors


# --- scores --------------------------------------------------------------------------------------


def degenerate(n_fit: int, gamma: float, k: int, dim: int) -> bool:
    """Whether full whitening (gamma = 1) of k >= rank dims makes the fitted set's cosines equal.

    With N <= D fitting vectors, Sigma has rank r = N - 1 (beta = 1) or N (beta < 1, generic
    data). Keeping every direction of that span at gamma = 1 gives Y^T Y = N I_r, so the Gram
    matrix of the N transformed vectors is N (I - 11^T / N) (beta = 1: every cosine is
    -1/(N-1), a regular simplex) or N I (beta = 0: every cosine 0) whatever the data; the
    Spearman of such cells is rounding noise. Flagged for k >= N - 1 (the floored null
    directions add only ~1e-10 to the fitted vectors in float64).
    """
    return gamma == 1.0 and n_fit <= dim and k >= n_fit - 1


def score_grid(task: Task, x: np.ndarray, fit_idx: np.ndarray, settings, ks: Sequence[int],
               eps: float) -> Dict[Tuple[float, float, int], float]:
    """Spearman x 100 of the task's pairs for every (beta, gamma) in settings and k in ks.

    docs/whitening.md (W1): one `fit` per beta on x[fit_idx], `apply` to every text. Call under
    `jax.enable_x64` (see the module docstring).

    Args:
      x: [N, D] vectors of task.texts.
      fit_idx: int [M] rows of x the whitening is fitted on.
      settings: (beta, gamma) pairs.
    Returns:
      {(beta, gamma, k): Spearman x 100}.
    """
    scores = {}
    for beta in sorted({b for b, _ in settings}):
        w = wh.fit(x[fit_idx], beta=beta, eps=eps)
        for gamma in sorted({g for b, g in settings if b == beta}):
            for k in ks:
                y = np.asarray(wh.apply(w, x, gamma=gamma, k=k))
                scores[(beta, gamma, k)] = spearman_x100(y, task.pairs, task.gold)
    return scores


def hubness_rows(points: np.ndarray, *, k: int, metric: str, main_k: int, eps: float) -> list:
    """Hubness of the fitting set's [M, D] vectors, raw and after the post's two settings.

    One dict per vectors (raw; beta = gamma = 1 and 0 at k = D and main_k; † marks a degenerate
    setting) with the fields of `udm.hubness.hubness_report`; [] when M <= k + 1.
    """
    if points.shape[0] <= k + 1:
        return []
    dim = points.shape[1]
    rows = [dict(vectors="raw", beta=None, gamma=None, dims=dim,
                 **hubness.hubness_report(points, k, metric=metric))]
    for beta, gamma in CORNERS:
        w = wh.fit(points, beta=beta, eps=eps)
        for dims in (dim, main_k):
            y = np.asarray(wh.apply(w, points, gamma=gamma, k=dims))
            mark = " †" if degenerate(points.shape[0], gamma, dims, dim) else ""
            rows.append(dict(vectors=f"β=γ={beta:g}, k={dims}{mark}", beta=beta, gamma=gamma,
                             dims=dims, **hubness.hubness_report(y, k, metric=metric)))
    return rows


@dataclasses.dataclass(frozen=True)
class Grid:
    """Every scored cell of one (task, pooling, fit); `raw` is the unwhitened score (a)."""
    task: str
    pooling: str
    fit: str
    main_fit: str
    n_fit: int
    raw: float
    scores: Dict[Tuple[float, float, int], float]


def corner_rows(grids: Sequence[Grid], ks: Sequence[int], dim: int) -> List[dict]:
    """The post's `a / b / c` rows: one per (task, pooling, fit, corner); c: {k: score}."""
    rows = []
    for g in grids:
        for beta, gamma in CORNERS:
            cells = {k: g.scores[(beta, gamma, k)] for k in ks}
            rows.append(dict(task=g.task, pooling=g.pooling, fit=g.fit, n_fit=g.n_fit,
                             beta=beta, gamma=gamma, a=g.raw,
                             degenerate_b=degenerate(g.n_fit, gamma, dim, dim), b=cells[dim],
                             c={int(k): v for k, v in cells.items() if k != dim},
                             main_fit=g.main_fit))
    return rows


def best_cells(g: Grid, grid: Sequence[float], ks: Sequence[int]) -> List[dict]:
    """Per k, the best (beta, gamma) of the grid and the two corners' scores."""
    out = []
    for k in ks:
        cells = {(b, c): g.scores[(b, c, k)] for b in grid for c in grid}
        (beta, gamma), best = max(cells.items(), key=lambda kv: kv[1])
        out.append(dict(k=k, beta=beta, gamma=gamma, score=best, one=cells[(1.0, 1.0)],
                        zero=cells[(0.0, 0.0)]))
    return out


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What `measure` found; plain numbers for tables and a results file.

    Attributes:
      tasks: the tasks, Lee first.
      lengths: task name -> `length_stats`.
      dim: D of the vectors; ks: the kept dimensions, descending, D included.
      grids: one `Grid` per (task, pooling, fit); every (beta, gamma) of the grid for the main
        fit, the two corners for the others.
      rows: `corner_rows` of the grids.
      hubness: `hubness_rows` of each (task, pooling)'s main fit, with task, pooling, fit, n.
      encode_seconds: time spent encoding (0 when every vector came from the cache).
    """
    tasks: List[Task]
    lengths: Dict[str, Dict[str, Any]]
    dim: int
    ks: List[int]
    grids: List[Grid]
    rows: List[dict]
    hubness: List[dict]
    encode_seconds: float


def measure(spec: Spec, *, cache_dir: str) -> Measurement:
    """Tasks -> cached embeddings -> float64 whitening scores and hubness (docs/whitening.md §7).

    Args:
      spec: from `from_config`.
      cache_dir: where the embeddings are cached (.npz); created when missing.
    """
    tasks = tasks_of(spec)
    lengths = {}
    for task in tasks:
        s = lengths[task.name] = length_stats(task)
        print(f"{task.name}: {s['truncated']} of {s['texts']} texts are longer than max_length "
              f"= {task.max_length} word pieces and are truncated (median length "
              f"{s['median']:.0f}, max {s['max']})")

    encoders: dict = {}
    embeddings = {}
    start = time.perf_counter()
    for task in tasks:
        for pooling in spec.encoder.poolings:
            embeddings[(task.name, pooling)] = encode_cached(
                    task, pooling, cache_dir=cache_dir, batch_size=spec.encoder.batch_size,
                    normalize=spec.encoder.normalize, encoders=encoders)
    encode_seconds = time.perf_counter() - start
    dim = next(iter(embeddings.values())).shape[1]
    wc, hc = spec.whitening, spec.hubness
    _check(max(wc.ks) <= dim, f"config.whitening.ks must be <= D={dim}, got {tuple(wc.ks)}")

    grid = [float(v) for v in wc.grid]
    full_settings = {(b, g) for b in grid for g in grid} | set(CORNERS)
    ks = sorted(set(wc.ks) | {dim}, reverse=True)
    grids, hub = [], []
    # float64 whitening: see the module docstring. One BLAS thread: the 384 x 384 eigh is tiny,
    # and on a loaded machine OpenBLAS's threads made it 10-100x slower (measured: 1 s vs
    # 0.013 s per fit).
    with jax.enable_x64(True), threadpool_limits(1, user_api="blas"):
        for task in tasks:
            for pooling in spec.encoder.poolings:
                x = embeddings[(task.name, pooling)].astype(np.float64)
                raw = spearman_x100(x, task.pairs, task.gold)
                for fit_name, fit_idx in task.fits.items():
                    settings = full_settings if fit_name == task.main_fit else set(CORNERS)
                    grids.append(Grid(task.name, pooling, fit_name, task.main_fit, len(fit_idx),
                                      raw, score_grid(task, x, fit_idx, settings, ks, wc.eps)))
                fit_idx = task.fits[task.main_fit]
                for h in hubness_rows(x[fit_idx], k=hc.k, metric=hc.metric, main_k=wc.main_k,
                                      eps=wc.eps):
                    hub.append(dict(task=task.name, pooling=pooling, fit=task.main_fit,
                                    n=len(fit_idx), **h))
    return Measurement(tasks, lengths, dim, ks, grids, corner_rows(grids, ks, dim), hub,
                       encode_seconds)


__all__ = ["CORNERS", "DataSpec", "EncoderSpec", "Grid", "HubnessSpec", "MODEL",
           "MODEL_DIM", "Measurement", "Spec", "Task", "WhiteningSpec", "best_cells",
           "corner_rows", "degenerate", "encode_cached", "from_config", "hubness_rows",
           "length_stats", "lee_task", "measure", "score_grid", "sts_task", "tasks_of",
           "validate"]
