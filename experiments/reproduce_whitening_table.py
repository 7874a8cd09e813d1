"""The (beta, gamma) BERT-whitening table of kexue.fm/archives/9079 on all-MiniLM-L6-v2 (docs/whitening.md).

  python -m experiments.reproduce_whitening_table --config=configs/whitening.py
  python -m experiments.reproduce_whitening_table --config=configs/whitening.py \
      --config.data.sts_path=/path/to/sts-test.tsv          # + STS-Benchmark rows
  python -m experiments.reproduce_whitening_table --smoke  # seconds: configs/whitening.py:smoke

For each pooling (P1 "cls", P3 "mean", P4 "first_last_avg") the texts of each task are encoded
once with the Flax all-MiniLM-L6-v2 (`udm.sentence_encoder`, CPU is fine) and cached in
`--workdir` as .npz, so a rerun skips the encoder. Then, with the whitening (W1, `udm.whitening`)
fitted on all texts of the task (docs/whitening.md §3; for Lee: the 50 rated + 300 background documents,
see configs/whitening.py):

1. the post's table: `no whitening / whitening all dims / whitening to k` for beta = gamma = 1
   (the original BERT-whitening) and beta = gamma = 0 (rotation + truncation), Spearman x 100
   between pair cosines and the gold scores (the Lee ratings; an STS-B file when given);
2. the same pattern beside the post's BERT-P4 and SimBERT-P1 rows (docs/whitening.md §4);
3. (Lee) the same cells with the whitening fitted on other data (background only, rated only);
4. hubness of the fitted vectors (k-occurrence N_k, `udm.hubness`) before and after whitening;
5. the full (beta, gamma) grid at every k, as a heat map (whitening_grid.png).

The whitening is fitted and applied in float64 (`jax.enable_x64` around that part only; the
encoder runs in float32): the Lee fit has N = 350 < D = 384, so 35 or more eigenvalues sit at
the floor eps * lambda_max and are scaled by up to eps^{-1/2} = 10^6 at gamma = 1; float32
rounding in those directions would then swamp the signal, and float64 also keeps the
beta = gamma = 0, k = D cells equal to the raw ones (a rotation) to ~1e-12.

Writes `--out` (.md, and .json / whitening_grid.png beside it); `--smoke` writes them to
`--workdir` instead and, without --config, uses configs/whitening.py:smoke.
"""
import dataclasses
import hashlib
import logging
import os
import sys
import time
from typing import Dict, List, Optional

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from threadpoolctl import threadpool_limits  # installed with scikit-learn, a udm dependency

from configs import whitening as whitening_config
from experiments.common import write_json
from udm import hubness
from udm import whitening as wh
from udm.data.similarity import load_lee_similarity, load_sts_tsv
from udm.metrics.similarity import spearman_x100
from udm.sentence_encoder import SentenceEncoder, model_dir

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/whitening.py[:smoke].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/whitening",
                               "Embedding cache (.npz); the outputs of --smoke runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/whitening_table.md",
                           "Markdown output; the .json and whitening_grid.png go beside it.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Write to --workdir; without --config use the "
                           ":smoke variant (seconds).")

MODEL = "all-MiniLM-L6-v2"
POOLING_NAMES = {"cls": "P1 (CLS)", "pooler": "P2 (pooler)", "mean": "P3 (mean)",
                 "first_last_avg": "P4 (first-last-avg)"}
# docs/whitening.md §4: kexue.fm/archives/9079, Spearman x 100, cells (no whitening, all dims, k = 256 of
# 768), Chinese tasks. BERT-P4: unsupervised BERT-base, first-last-avg; SimBERT-P1: supervised
# similar-sentence BERT-base, [CLS].
POST_TASKS = ("ATEC", "BQ", "LCQMC", "PAWSX", "STS-B")
POST = {
    ("BERT-P4", 1): [(24.51, 27.00, 27.91), (38.81, 32.29, 37.67), (64.75, 64.75, 65.65),
                     (15.12, 17.80, 15.34), (61.66, 69.45, 69.37)],
    ("BERT-P4", 0): [(24.51, 24.51, 24.59), (38.81, 38.81, 38.99), (64.75, 64.75, 63.45),
                     (15.12, 15.12, 14.59), (61.66, 61.66, 62.30)],
    ("SimBERT-P1", 1): [(38.50, 23.64, 30.79), (48.54, 31.78, 40.01), (76.23, 75.05, 74.50),
                        (15.10, 18.49, 15.64), (74.14, 73.37, 75.29)],
    ("SimBERT-P1", 0): [(38.50, 38.50, 38.81), (48.54, 48.54, 48.66), (76.23, 76.23, 76.22),
                        (15.10, 15.10, 14.88), (74.14, 74.14, 74.46)],
}
CORNERS = ((1.0, 1.0), (0.0, 0.0))  # (beta, gamma) of the post's two rows
HUBNESS_COLUMNS = ("skewness", "max", "frac_zero", "hub_occurrence", "robin_hood", "gini",
                   "corr_dist_to_mean")


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


def _lee_task(config) -> Task:
    lee = load_lee_similarity()
    n = config.data.lee_num_documents or len(lee.texts)
    m = config.data.lee_num_background
    if not 2 <= n <= len(lee.texts):
        raise ValueError(f"config.data.lee_num_documents must be 0 or in [2, {len(lee.texts)}], "
                         f"got {n}")
    if not 0 <= m <= len(lee.background):
        raise ValueError(f"config.data.lee_num_background must be in [0, "
                         f"{len(lee.background)}], got {m}")
    keep = (lee.pairs[:, 0] < n) & (lee.pairs[:, 1] < n)
    fits = {"all": np.arange(n + m), "background": np.arange(n, n + m), "rated": np.arange(n)}
    names = [config.data.lee_fit, *config.data.lee_fit_ablation]
    for name in names:
        if name not in fits:
            raise ValueError(f"config.data.lee_fit / lee_fit_ablation: unknown fit {name!r}; "
                             f"valid: {', '.join(fits)}")
        if len(fits[name]) < 2:
            raise ValueError(f"Lee fit {name!r} has {len(fits[name])} texts: need >= 2")
    return Task("lee", f"Lee et al. (2005): {n} news documents, {int(keep.sum())} rated pairs, "
                f"+ {m} background documents", list(lee.texts[:n]) + list(lee.background[:m]),
                lee.pairs[keep], lee.gold[keep], {name: fits[name] for name in names},
                config.encoder.max_length)


def _sts_task(config) -> Task:
    sts = load_sts_tsv(config.data.sts_path)
    return Task("sts", f"STS-Benchmark file {os.path.basename(config.data.sts_path)}: "
                f"{len(sts.pairs)} pairs, {len(sts.texts)} distinct sentences", list(sts.texts),
                sts.pairs, np.asarray(sts.gold, np.float64),
                {"all": np.arange(len(sts.texts))}, config.encoder.sts_max_length)


def validate(config) -> None:
    """Refuses bad values before any encoding, naming the field."""
    unknown = [p for p in config.encoder.poolings if p not in POOLING_NAMES]
    if unknown or not config.encoder.poolings:
        raise ValueError(f"config.encoder.poolings: unknown {unknown}; valid: "
                         f"{', '.join(POOLING_NAMES)}")
    for name in ("ks", "grid"):
        if not len(config.whitening[name]):
            raise ValueError(f"config.whitening.{name} must not be empty")
    for v in config.whitening.grid:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"config.whitening.grid values must be in [0, 1], got {v}")
    for k in config.whitening.ks:
        if not 1 <= k <= 384:
            raise ValueError(f"config.whitening.ks must be in [1, D=384], got {k}")
    if config.whitening.main_k not in config.whitening.ks:
        raise ValueError(f"config.whitening.main_k={config.whitening.main_k} must be one of "
                         f"config.whitening.ks={tuple(config.whitening.ks)}")
    if config.hubness.k < 1:
        raise ValueError(f"config.hubness.k must be >= 1, got {config.hubness.k}")
    if config.hubness.metric not in hubness.METRICS:
        raise ValueError(f"config.hubness.metric must be one of {hubness.METRICS}")


# --- encoding (cached) ---------------------------------------------------------------------------


def _count_truncated(texts: List[str], max_length: int) -> np.ndarray:
    """Untruncated word-piece lengths ([CLS] and [SEP] included) of texts."""
    import tokenizers
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return np.array([len(e.ids) for e in tokenizer.encode_batch(texts)])


def encode_cached(task: Task, pooling: str, config, encoders: dict) -> np.ndarray:
    """[N, 384] float32 vectors of task.texts, read from the workdir cache when present."""
    key = hashlib.sha1("\x00".join([MODEL, pooling, str(task.max_length),
                                    str(config.encoder.normalize), *task.texts]).encode())
    key = key.hexdigest()[:16]
    path = os.path.join(_WORKDIR.value, "embeddings", f"{task.name}_{pooling}_{key}.npz")
    if os.path.exists(path):
        with np.load(path) as data:
            return data["vectors"]
    if task.max_length not in encoders:
        encoders[task.max_length] = SentenceEncoder.from_package(max_length=task.max_length)
    start = time.perf_counter()
    vectors = encoders[task.max_length].encode(task.texts, pooling=pooling,
                                               batch_size=config.encoder.batch_size,
                                               normalize=config.encoder.normalize, progress=False)
    print(f"encoded {len(task.texts)} {task.name} texts, pooling {pooling}: "
          f"{time.perf_counter() - start:.1f} s")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, vectors=vectors)
    os.replace(path + ".tmp", path)
    return vectors


# --- whitening scores ----------------------------------------------------------------------------


def _ks_with_all(config, dim: int) -> List[int]:
    return sorted(set(config.whitening.ks) | {dim}, reverse=True)


def score_grid(task: Task, x: np.ndarray, fit_idx: np.ndarray, settings, ks, eps: float
               ) -> Dict[tuple, float]:
    """Spearman x 100 of the task's pairs for every (beta, gamma) in settings and k in ks.

    One `fit` per beta on x[fit_idx]; `apply` to every text. Call under jax.enable_x64.
    """
    scores = {}
    for beta in sorted({b for b, _ in settings}):
        w = wh.fit(x[fit_idx], beta=beta, eps=eps)
        for gamma in sorted({g for b, g in settings if b == beta}):
            for k in ks:
                y = np.asarray(wh.apply(w, x, gamma=gamma, k=k))
                scores[(beta, gamma, k)] = spearman_x100(y, task.pairs, task.gold)
    return scores


def hubness_rows(task: Task, x: np.ndarray, fit_idx: np.ndarray, config, main_k: int) -> list:
    """Hubness of the fitting set's vectors, raw and after the post's two settings."""
    k = config.hubness.k
    points = x[fit_idx]
    if points.shape[0] <= k + 1:
        return []
    dim = x.shape[1]
    rows = [dict(vectors="raw", beta=None, gamma=None, dims=dim,
                 **hubness.hubness_report(points, k, metric=config.hubness.metric))]
    for beta, gamma in CORNERS:
        w = wh.fit(points, beta=beta, eps=config.whitening.eps)
        for dims in (dim, main_k):
            y = np.asarray(wh.apply(w, points, gamma=gamma, k=dims))
            mark = " †" if degenerate(points.shape[0], gamma, dims, dim) else ""
            rows.append(dict(vectors=f"β=γ={beta:g}, k={dims}{mark}", beta=beta, gamma=gamma,
                             dims=dims,
                             **hubness.hubness_report(y, k, metric=config.hubness.metric)))
    return rows


# --- outputs -------------------------------------------------------------------------------------


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


def _f(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}"


def _signed(v: float) -> str:
    return f"{v:+.2f}"


def table_rows(results, config, dim) -> list:
    """Rows of the post's table: one per (task, pooling, fit, corner)."""
    rows = []
    for r in results:
        for beta, gamma in CORNERS:
            cells = {k: r["scores"][(beta, gamma, k)] for k in _ks_with_all(config, dim)}
            rows.append(dict(task=r["task"], pooling=r["pooling"], fit=r["fit"],
                             n_fit=r["n_fit"], beta=beta, gamma=gamma, a=r["raw"],
                             degenerate_b=degenerate(r["n_fit"], gamma, dim, dim),
                             b=cells[dim], c={int(k): v for k, v in cells.items() if k != dim}))
    return rows


def _main_table(rows, ks, main_k, dim) -> List[str]:
    head = (f"| data | pooling | setting | no whitening (a) | all dims (b, k = {dim}) | "
            + " | ".join(f"k = {k}" for k in ks) + f" | a / b / c (c: k = {main_k}) |")
    lines = [head, "|" + " --- |" * (6 + len(ks))]
    for r in rows:
        mark = "†" if degenerate(r["n_fit"], r["gamma"], dim, dim) else ""
        lines.append(f"| {r['task']} | {POOLING_NAMES[r['pooling']]} | β=γ={r['beta']:g} | "
                     f"{_f(r['a'])} | {_f(r['b'])}{mark} | "
                     + " | ".join(_f(r["c"][k]) + ("†" if degenerate(r["n_fit"], r["gamma"], k,
                                                                     dim) else "") for k in ks)
                     + f" | {r['a']:.2f} / {r['b']:.2f}{mark} / {r['c'][main_k]:.2f} |")
    return lines


def _pattern_table(rows, main_k, dim) -> List[str]:
    lines = ["| source | encoder-pooling | data | setting | a / b / c | b − a | c − a | c keeps |",
             "|" + " --- |" * 8]
    sts_b = POST_TASKS.index("STS-B")
    for (model, corner), cells in POST.items():
        a, b, c = cells[sts_b]
        lines.append(f"| post | {model} | STS-B (zh) | β=γ={corner} | {a:.2f} / {b:.2f} / "
                     f"{c:.2f} | {_signed(b - a)} | {_signed(c - a)} | 256 of 768 |")
        db = [t[1] - t[0] for t in cells]
        dc = [t[2] - t[0] for t in cells]
        lines.append(f"| post | {model} | 5 tasks, range | β=γ={corner} | – | "
                     f"{min(db):+.2f} … {max(db):+.2f} | {min(dc):+.2f} … {max(dc):+.2f} | "
                     f"256 of 768 |")
    for r in rows:
        c = r["c"][main_k]
        mark = "†" if degenerate(r["n_fit"], r["gamma"], dim, dim) else ""
        lines.append(f"| ours | MiniLM-{POOLING_NAMES[r['pooling']].split()[0]} | {r['task']} | "
                     f"β=γ={r['beta']:g} | {r['a']:.2f} / {r['b']:.2f}{mark} / {c:.2f} | "
                     f"{_signed(r['b'] - r['a'])}{mark} | {_signed(c - r['a'])} | "
                     f"{main_k} of {dim} |")
    return lines


def _hubness_table(hub) -> List[str]:
    lines = ["| data | pooling | vectors | skewness N_k | max N_k | antihubs (N_k = 0) | "
             "hub occ. | Robin Hood | Gini | corr(N_k, ‖x − x̄‖) |", "|" + " --- |" * 10]
    for h in hub:
        lines.append(f"| {h['task']} | {POOLING_NAMES[h['pooling']]} | {h['vectors']} | "
                     f"{h['skewness']:.2f} | {h['max']} | {h['frac_zero']:.3f} | "
                     f"{h['hub_occurrence']:.3f} | {h['robin_hood']:.3f} | {h['gini']:.3f} | "
                     f"{h['corr_dist_to_mean']:.2f} |")
    return lines


def _grid_best_lines(results, config, dim) -> List[str]:
    lines = ["| data | pooling | k | best (β, γ) | best score | raw (a) | β=γ=1 | β=γ=0 |",
             "|" + " --- |" * 8]
    grid = config.whitening.grid
    for r in results:
        if r["fit"] != r["main_fit"]:
            continue
        for k in _ks_with_all(config, dim):
            cells = {(b, g): r["scores"][(b, g, k)] for b in grid for g in grid}
            (b, g), best = max(cells.items(), key=lambda kv: kv[1])
            lines.append(f"| {r['task']} | {POOLING_NAMES[r['pooling']]} | {k} | ({b:g}, {g:g}) "
                         f"| {best:.2f} | {r['raw']:.2f} | {cells[(1.0, 1.0)]:.2f} | "
                         f"{cells[(0.0, 0.0)]:.2f} |")
    return lines


def _findings(rows, hub, main_k) -> List[str]:
    """Sentences computed from the numbers (no hand-written claims)."""
    out = []
    for task in sorted({r["task"] for r in rows}, key=lambda t: t != "lee"):
        main = [r for r in rows if r["task"] == task and r["fit"] == r.get("main_fit", r["fit"])]
        one = [r for r in main if r["beta"] == 1.0]
        zero = [r for r in main if r["beta"] == 0.0]
        db = [r["b"] - r["a"] for r in one if not r["degenerate_b"]]
        dc1 = [r["c"][main_k] - r["a"] for r in one]
        dc0 = [r["c"][main_k] - r["a"] for r in zero]
        rot = max(abs(r["b"] - r["a"]) for r in zero)
        all_dims = (f"{min(db):+.2f} … {max(db):+.2f} (all dims) and " if db else
                    "– (all dims: degenerate †) and ")
        out.append(
                f"* {task}: β=γ=1 changes the score by {all_dims}"
                f"{min(dc1):+.2f} … {max(dc1):+.2f} (k = {main_k}) over the poolings; "
                f"β=γ=0 with k = {main_k} by {min(dc0):+.2f} … {max(dc0):+.2f}; β=γ=0 all dims "
                f"equals no whitening to {rot:.1e} (a rotation).")
    for task in sorted({h["task"] for h in hub}):
        for pooling in dict.fromkeys(h["pooling"] for h in hub if h["task"] == task):
            hs = {h["vectors"]: h for h in hub if h["task"] == task and h["pooling"] == pooling}
            raw = hs["raw"]
            white = next(v for name, v in hs.items() if name.startswith("β=γ=1") and
                         v["dims"] == main_k)
            out.append(f"* hubness, {task} {POOLING_NAMES[pooling]}: skewness of N_k "
                       f"{raw['skewness']:.2f} raw → {white['skewness']:.2f} after β=γ=1, "
                       f"k = {main_k}; antihubs {raw['frac_zero']:.3f} → "
                       f"{white['frac_zero']:.3f}.")
    return out


def plot_grid(results, config, dim, path) -> None:
    """Heat maps of Spearman x 100 over (beta, gamma): a row per (task, pooling), a column per k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = list(config.whitening.grid)
    ks = _ks_with_all(config, dim)
    panels = [r for r in results if r["fit"] == r["main_fit"]]
    fig, axes = plt.subplots(len(panels), len(ks), squeeze=False, layout="constrained",
                             figsize=(2.6 * len(ks) + 1.0, 2.5 * len(panels) + 0.6))
    for row, r in enumerate(panels):
        values = np.array([[[r["scores"][(b, g, k)] for g in grid] for b in grid] for k in ks])
        lo, hi = float(values.min()), float(values.max())
        for col, k in enumerate(ks):
            ax = axes[row, col]
            image = ax.imshow(values[col], origin="lower", cmap="viridis", vmin=lo, vmax=hi)
            for i in range(len(grid)):
                for j in range(len(grid)):
                    ax.text(j, i, f"{values[col, i, j]:.1f}", ha="center", va="center",
                            fontsize=6, color="w" if values[col, i, j] < (lo + hi) / 2 else "k")
            ax.set_xticks(range(len(grid)), [f"{g:g}" for g in grid], fontsize=7)
            ax.set_yticks(range(len(grid)), [f"{b:g}" for b in grid], fontsize=7)
            ax.set_xlabel("γ", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{r['task']} {POOLING_NAMES[r['pooling']]}\nβ", fontsize=8)
            note = ", γ=1 degenerate" if degenerate(r["n_fit"], 1.0, k, dim) else ""
            ax.set_title(f"k = {k}" + (" (all)" if k == dim else "") + f"; raw {r['raw']:.1f}"
                         + note, fontsize=8)
        fig.colorbar(image, ax=axes[row].tolist(), shrink=0.9)
    fig.suptitle(f"Spearman ×100 of {MODEL} + whitening (β, γ, k)", fontsize=10)
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def _jsonable_scores(scores: dict) -> list:
    return [dict(beta=b, gamma=g, k=int(k), score=v) for (b, g, k), v in sorted(scores.items())]


def main(argv):
    del argv
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its corpus-loading chatter
    config = _CONFIG.value
    if config is None:
        config = whitening_config.get_config("smoke" if _SMOKE.value else "")
    validate(config)
    if _SMOKE.value:
        out = os.path.join(_WORKDIR.value, "whitening_table.md")
    else:
        out = _OUT.value
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    start = time.perf_counter()

    tasks = [_lee_task(config)]
    if config.data.sts_path:
        tasks.append(_sts_task(config))
    lengths = {}
    for task in tasks:
        lens = _count_truncated(task.texts, task.max_length)
        lengths[task.name] = dict(max_length=task.max_length, texts=len(lens),
                                  truncated=int((lens > task.max_length).sum()),
                                  median=float(np.median(lens)), max=int(lens.max()))
        if task.name == "lee":
            n_rated = int(task.pairs.max()) + 1
            lengths[task.name]["truncated_rated"] = int((lens[:n_rated] > task.max_length).sum())
        print(f"{task.name}: {lengths[task.name]['truncated']} of {len(lens)} texts are longer "
              f"than max_length = {task.max_length} word pieces and are truncated (median "
              f"length {lengths[task.name]['median']:.0f}, max {lengths[task.name]['max']})")

    encoders: dict = {}
    embeddings = {}
    encode_start = time.perf_counter()
    for task in tasks:
        for pooling in config.encoder.poolings:
            embeddings[(task.name, pooling)] = encode_cached(task, pooling, config, encoders)
    encode_seconds = time.perf_counter() - encode_start
    dim = next(iter(embeddings.values())).shape[1]
    if max(config.whitening.ks) > dim:
        raise ValueError(f"config.whitening.ks must be <= D={dim}, got "
                         f"{tuple(config.whitening.ks)}")

    grid = [float(v) for v in config.whitening.grid]
    full_settings = {(b, g) for b in grid for g in grid} | set(CORNERS)
    ks = _ks_with_all(config, dim)
    main_k = config.whitening.main_k
    results, hub = [], []
    # float64 whitening: see the module docstring. One BLAS thread: the 384 x 384 eigh is tiny,
    # and on a loaded machine OpenBLAS's threads made it 10-100x slower (measured: 1 s vs
    # 0.013 s per fit).
    with jax.enable_x64(True), threadpool_limits(1, user_api="blas"):
        for task in tasks:
            main_fit = next(iter(task.fits))
            for pooling in config.encoder.poolings:
                x = embeddings[(task.name, pooling)].astype(np.float64)
                raw = spearman_x100(x, task.pairs, task.gold)
                for fit_name, fit_idx in task.fits.items():
                    settings = full_settings if fit_name == main_fit else set(CORNERS)
                    scores = score_grid(task, x, fit_idx, settings, ks, config.whitening.eps)
                    results.append(dict(task=task.name, pooling=pooling, fit=fit_name,
                                        main_fit=main_fit, n_fit=len(fit_idx), raw=raw,
                                        scores=scores))
                for h in hubness_rows(task, x, task.fits[main_fit], config, main_k):
                    hub.append(dict(task=task.name, pooling=pooling, fit=main_fit,
                                    n=len(task.fits[main_fit]), **h))
    seconds = time.perf_counter() - start

    rows = table_rows(results, config, dim)
    for row in rows:
        row["main_fit"] = next(iter(next(t for t in tasks if t.name == row["task"]).fits))
    main_rows = [r for r in rows if r["fit"] == r["main_fit"]]
    ablation_rows = [r for r in rows if r["fit"] != r["main_fit"]]
    small_ks = sorted((k for k in ks if k != dim), reverse=True)
    png = os.path.join(os.path.dirname(out), "whitening_grid.png")
    plot_grid(results, config, dim, png)

    device = f"{jax.device_count()} x {jax.devices()[0].platform}"
    command = " ".join(["python -m experiments.reproduce_whitening_table", *sys.argv[1:]])
    lee = tasks[0]
    lee_len = lengths["lee"]
    header = [
        "# BERT-whitening with (β, γ, k) on all-MiniLM-L6-v2 (docs/whitening.md, kexue.fm/archives/9079)",
        "",
        f"* **Model:** {MODEL} (6 layers, D = {dim}; udm.sentence_encoder, the Flax port of "
        f"the packaged weights), a *supervised* sentence encoder (contrastive training on ~1B "
        f"sentence pairs), like the post's SimBERT. Raw pooled vectors (normalize = "
        f"{config.encoder.normalize}); poolings "
        f"{', '.join(POOLING_NAMES[p] for p in config.encoder.poolings)}.",
        f"* **Data:** {lee.description}; texts cut at {lee.max_length} word pieces "
        f"({lee_len['truncated']} of {lee_len['texts']} truncated, "
        f"{lee_len['truncated_rated']} of them rated; median length "
        f"{lee_len['median']:.0f}). Document-level similarity, not sentence-level.",
    ]
    if len(tasks) > 1:
        sts = tasks[1]
        header.append(f"* **STS:** {sts.description}; texts cut at {sts.max_length} word "
                      f"pieces ({lengths['sts']['truncated']} truncated).")
    fit_text = {"all": "all texts of the task (Lee: rated + background documents)",
                "background": "the background documents only", "rated": "the rated documents"}
    header += [
        f"* **Whitening fitted on:** Lee — {fit_text[config.data.lee_fit]} "
        f"(N = {len(lee.fits[config.data.lee_fit])}, "
        f"{len({lee.texts[i] for i in lee.fits[config.data.lee_fit]})} distinct)"
        + ("; STS — all sentences of the file (both sides of every pair; docs/whitening.md §3)"
           if len(tasks) > 1 else "")
        + ". Fit and transform in float64; eigenvalue floor "
          f"{config.whitening.eps:g} × λ_max.",
        "* **Score:** Spearman ×100 between the cosine of each pair and its gold score. Cells "
        "`a / b / c` as in the post: a = no whitening, b = whitening with all dims, c = "
        f"whitening to k = {main_k}"
        + (" (= D/3, the post's 256 of 768; the author's k for the 384-d SimBERT-small)."
           if 3 * main_k == dim else "."),
    ]
    n_main = len(lee.fits[config.data.lee_fit])
    if n_main < 10 * dim:
        header.append(f"* The Lee whitening is estimated from N = {n_main} documents for D = {dim} "
                      f"dimensions (N/D = {n_main / dim:.2f}); the post's tasks have thousands "
                      f"of sentences (N ≫ D). Equalising (γ = 1) the directions of such a "
                      f"covariance over-weights its smallest, least well estimated ones.")
    degenerate_fits = sorted({(t.name, len(i)) for t in tasks for i in t.fits.values()
                              if len(i) <= dim})
    if degenerate_fits:
        header.append(
                "* † = degenerate cell: with N ≤ D fitting vectors "
                f"({', '.join(f'{name} N = {n}' for name, n in degenerate_fits)}; D = {dim}) the "
                "covariance has rank ≤ N − 1, and whitening (γ = 1) every direction of that span "
                "maps the N fitted vectors to a regular simplex — all their pairwise cosines equal "
                "−1/(N−1) whatever the data — so the Spearman of that cell is rounding noise, "
                "not a measurement; texts outside the fit (the rated documents of the "
                "'background' fit) are instead dominated by their components along the null "
                "directions, scaled up by as much as eps^−1/2 = 10^6. Only k < N − 1 is "
                "informative there.")
    lines = header + [
        "",
        "## 1. The post's table shape",
        "",
        *_main_table(main_rows, small_ks, main_k, dim),
        "",
        "## 2. The pattern beside the post (Spearman ×100, docs/whitening.md §4)",
        "",
        "The post's cells are Chinese tasks with BERT-base (768-d); STS-B is the task closest "
        "to ours, the five-task range shows how much the effect varies. Compare signs and "
        "sizes of b − a and c − a, not absolute scores.",
        "",
        *_pattern_table(main_rows, main_k, dim),
        "",
        *_findings([dict(r) for r in main_rows], hub, main_k),
    ]
    if ablation_rows:
        lines += ["", "## 3. Lee: what the whitening is fitted on",
                  "", f"Main fit: {config.data.lee_fit}. Other fits, same cells:", "",
                  "| fit on (N) | pooling | setting | a | b (all dims) | "
                  + " | ".join(f"k = {k}" for k in small_ks) + " |",
                  "|" + " --- |" * (5 + len(small_ks))]
        for r in ablation_rows:
            def cell(v, k):
                return _f(v) + ("†" if degenerate(r["n_fit"], r["gamma"], k, dim) else "")
            lines.append(f"| {r['fit']} ({r['n_fit']}) | {POOLING_NAMES[r['pooling']]} | "
                         f"β=γ={r['beta']:g} | {r['a']:.2f} | {cell(r['b'], dim)} | "
                         + " | ".join(cell(r["c"][k], k) for k in small_ks) + " |")
    lines += ["", "## 4. Hubness of the fitted vectors before and after whitening", "",
              f"N_k with k = {config.hubness.k} ({config.hubness.metric} distance, self "
              f"excluded, `udm.hubness`) over the fitting set; antihubs = fraction with "
              f"N_k = 0, hub occ. = share of neighbour slots held by points with N_k ≥ "
              f"2k. β=γ=0 with all dims is a rotation: its k-NN graph is the raw one.", "",
              *(_hubness_table(hub) if hub else ["(too few points for the k-NN graph)"]),
              "", "## 5. The (β, γ) grid",
              "", f"![grid]({os.path.basename(png)}) — every (β, γ) in "
                  f"{{{', '.join(f'{g:g}' for g in grid)}}}², at k = "
                  f"{', '.join(map(str, ks))}. Best grid point per panel (tuned on the "
                  f"evaluation pairs themselves: an optimistic upper bound, not a result):", "",
              *_grid_best_lines(results, config, dim),
              "", f"Command: `{command}`", "",
              f"Run time: {seconds:.0f} s on {device} (encoding {encode_seconds:.0f} s; 0 when "
              f"read from the cache in {_WORKDIR.value}/embeddings)."]
    text = "\n".join(lines) + "\n"
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    write_json(os.path.splitext(out)[0] + ".json", dict(
            config=config.to_dict(), command=command, model=MODEL, dim=dim,
            tasks={t.name: dict(lengths[t.name], description=t.description,
                                pairs=len(t.pairs), fits={n: len(i) for n, i in t.fits.items()})
                   for t in tasks},
            table=[dict(r) for r in rows],
            grid=[dict(task=r["task"], pooling=r["pooling"], fit=r["fit"], n_fit=r["n_fit"],
                       raw=r["raw"], cells=_jsonable_scores(r["scores"])) for r in results],
            hubness=hub,
            post={f"{m}, beta=gamma={c}": dict(zip(POST_TASKS, v)) for (m, c), v in POST.items()},
            png=png, seconds=seconds, encode_seconds=encode_seconds, device=device,
            whitening_dtype="float64"))
    print(text)
    print(f"Wrote {out}, {os.path.splitext(out)[0]}.json and {png}")


if __name__ == "__main__":
    app.run(main)
