"""The (beta, gamma) BERT-whitening table of kexue.fm/archives/9079 on all-MiniLM-L6-v2.

  python -m experiments.reproduce_whitening_table --config=configs/whitening.py
  python -m experiments.reproduce_whitening_table --config=configs/whitening.py \
      --config.data.sts_path=/path/to/sts-test.tsv          # + STS-Benchmark rows
  python -m experiments.reproduce_whitening_table --smoke  # seconds: configs/whitening.py:smoke

docs/whitening.md §7. `udm.pipeline.whitening.measure` does the work (embeddings cached in
`--workdir`/embeddings, so a rerun skips the encoder; whitening in float64); this script writes
what it returns as:

1. the post's table: `no whitening / whitening all dims / whitening to k` for beta = gamma = 1
   (the original BERT-whitening) and beta = gamma = 0 (rotation + truncation), Spearman x 100
   between pair cosines and the gold scores (the Lee ratings; an STS-B file when given);
2. the same pattern beside the post's BERT-P4 and SimBERT-P1 rows (docs/whitening.md §4);
3. (Lee) the same cells with the whitening fitted on other data (background only, rated only);
4. hubness of the fitted vectors (k-occurrence N_k, `udm.hubness`) before and after whitening;
5. the full (beta, gamma) grid at every k, as a heat map (whitening_grid.png).

Writes `--out` (.md, and .json / whitening_grid.png beside it); `--smoke` writes them to
`--workdir` instead and, without --config, uses configs/whitening.py:smoke.
"""
import logging
import os
import sys
import time
from typing import List

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from configs import whitening as whitening_config
from experiments.common import write_json
from udm.pipeline import whitening as pw
from udm.pipeline.whitening import MODEL, degenerate

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/whitening.py[:smoke].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/whitening",
                               "Embedding cache (.npz); the outputs of --smoke runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/whitening_table.md",
                           "Markdown output; the .json and whitening_grid.png go beside it.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Write to --workdir; without --config use the "
                           ":smoke variant (seconds).")

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


def _cell(r: dict, v: float, k: int, dim: int) -> str:
    """A score with † when the cell is degenerate (`udm.pipeline.whitening.degenerate`)."""
    return f"{v:.2f}" + ("†" if degenerate(r["n_fit"], r["gamma"], k, dim) else "")


def _range(values) -> str:
    return f"{min(values):+.2f} … {max(values):+.2f}"


def _main_table(rows, ks, main_k, dim) -> List[str]:
    lines = [f"| data | pooling | setting | no whitening (a) | all dims (b, k = {dim}) | "
             + " | ".join(f"k = {k}" for k in ks) + f" | a / b / c (c: k = {main_k}) |",
             "|" + " --- |" * (6 + len(ks))]
    for r in rows:
        b = _cell(r, r["b"], dim, dim)
        lines.append(f"| {r['task']} | {POOLING_NAMES[r['pooling']]} | β=γ={r['beta']:g} | "
                     f"{r['a']:.2f} | {b} | " + " | ".join(_cell(r, r["c"][k], k, dim) for k in ks)
                     + f" | {r['a']:.2f} / {b} / {r['c'][main_k]:.2f} |")
    return lines


def _pattern_table(rows, main_k, dim) -> List[str]:
    lines = ["| source | encoder-pooling | data | setting | a / b / c | b − a | c − a | c keeps |",
             "|" + " --- |" * 8]
    for (model, corner), cells in POST.items():
        a, b, c = cells[POST_TASKS.index("STS-B")]
        lines += [f"| post | {model} | STS-B (zh) | β=γ={corner} | {a:.2f} / {b:.2f} / {c:.2f} | "
                  f"{b - a:+.2f} | {c - a:+.2f} | 256 of 768 |",
                  f"| post | {model} | 5 tasks, range | β=γ={corner} | – | "
                  f"{_range([t[1] - t[0] for t in cells])} | "
                  f"{_range([t[2] - t[0] for t in cells])} | 256 of 768 |"]
    for r in rows:
        c, mark = r["c"][main_k], "†" if r["degenerate_b"] else ""
        lines.append(f"| ours | MiniLM-{POOLING_NAMES[r['pooling']].split()[0]} | {r['task']} | "
                     f"β=γ={r['beta']:g} | {r['a']:.2f} / {r['b']:.2f}{mark} / {c:.2f} | "
                     f"{r['b'] - r['a']:+.2f}{mark} | {c - r['a']:+.2f} | {main_k} of {dim} |")
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


def _grid_best_table(m: pw.Measurement, grid) -> List[str]:
    lines = ["| data | pooling | k | best (β, γ) | best score | raw (a) | β=γ=1 | β=γ=0 |",
             "|" + " --- |" * 8]
    for g in m.grids:
        if g.fit == g.main_fit:
            lines += [f"| {g.task} | {POOLING_NAMES[g.pooling]} | {c['k']} | ({c['beta']:g}, "
                      f"{c['gamma']:g}) | {c['score']:.2f} | {g.raw:.2f} | {c['one']:.2f} | "
                      f"{c['zero']:.2f} |" for c in pw.best_cells(g, grid, m.ks)]
    return lines


def _findings(rows, hub, main_k) -> List[str]:
    """Sentences computed from the numbers (no hand-written claims)."""
    out = []
    for task in sorted({r["task"] for r in rows}, key=lambda t: t != "lee"):
        one = [r for r in rows if r["task"] == task and r["beta"] == 1.0]
        zero = [r for r in rows if r["task"] == task and r["beta"] == 0.0]
        db = [r["b"] - r["a"] for r in one if not r["degenerate_b"]]
        rot = max(abs(r["b"] - r["a"]) for r in zero)
        all_dims = f"{_range(db)} (all dims) and " if db else "– (all dims: degenerate †) and "
        out.append(f"* {task}: β=γ=1 changes the score by {all_dims}"
                   f"{_range([r['c'][main_k] - r['a'] for r in one])} (k = {main_k}) over the "
                   f"poolings; β=γ=0 with k = {main_k} by "
                   f"{_range([r['c'][main_k] - r['a'] for r in zero])}; β=γ=0 all dims "
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


def plot_grid(m: pw.Measurement, grid, path) -> None:
    """Heat maps of Spearman x 100 over (beta, gamma): a row per (task, pooling), a column per k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [g for g in m.grids if g.fit == g.main_fit]
    fig, axes = plt.subplots(len(panels), len(m.ks), squeeze=False, layout="constrained",
                             figsize=(2.6 * len(m.ks) + 1.0, 2.5 * len(panels) + 0.6))
    for row, p in enumerate(panels):
        values = np.array([[[p.scores[(b, g, k)] for g in grid] for b in grid] for k in m.ks])
        lo, hi = float(values.min()), float(values.max())
        for col, k in enumerate(m.ks):
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
                ax.set_ylabel(f"{p.task} {POOLING_NAMES[p.pooling]}\nβ", fontsize=8)
            note = ", γ=1 degenerate" if degenerate(p.n_fit, 1.0, k, m.dim) else ""
            ax.set_title(f"k = {k}" + (" (all)" if k == m.dim else "") + f"; raw {p.raw:.1f}"
                         + note, fontsize=8)
        fig.colorbar(image, ax=axes[row].tolist(), shrink=0.9)
    fig.suptitle(f"Spearman ×100 of {MODEL} + whitening (β, γ, k)", fontsize=10)
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def _header(spec: pw.Spec, m: pw.Measurement) -> List[str]:
    """The page's opening bullets: model, data, fit, score, caveats."""
    dim, main_k, lee, lee_len = m.dim, spec.whitening.main_k, m.tasks[0], m.lengths["lee"]
    lines = [
        "# BERT-whitening with (β, γ, k) on all-MiniLM-L6-v2 (docs/whitening.md, kexue.fm/archives/9079)",
        "",
        f"* **Model:** {MODEL} (6 layers, D = {dim}; udm.sentence_encoder, the Flax port of "
        f"the packaged weights), a *supervised* sentence encoder (contrastive training on ~1B "
        f"sentence pairs), like the post's SimBERT. Raw pooled vectors (normalize = "
        f"{spec.encoder.normalize}); poolings "
        f"{', '.join(POOLING_NAMES[p] for p in spec.encoder.poolings)}.",
        f"* **Data:** {lee.description}; texts cut at {lee.max_length} word pieces "
        f"({lee_len['truncated']} of {lee_len['texts']} truncated, "
        f"{lee_len['truncated_rated']} of them rated; median length "
        f"{lee_len['median']:.0f}). Document-level similarity, not sentence-level."]
    if len(m.tasks) > 1:
        lines.append(f"* **STS:** {m.tasks[1].description}; texts cut at {m.tasks[1].max_length} "
                     f"word pieces ({m.lengths['sts']['truncated']} truncated).")
    fit_text = {"all": "all texts of the task (Lee: rated + background documents)",
                "background": "the background documents only", "rated": "the rated documents"}
    fit = lee.fits[spec.data.lee_fit]
    lines += [
        f"* **Whitening fitted on:** Lee — {fit_text[spec.data.lee_fit]} (N = {len(fit)}, "
        f"{len({lee.texts[i] for i in fit})} distinct)"
        + ("; STS — all sentences of the file (both sides of every pair; docs/whitening.md §3)"
           if len(m.tasks) > 1 else "")
        + f". Fit and transform in float64; eigenvalue floor {spec.whitening.eps:g} × λ_max.",
        "* **Score:** Spearman ×100 between the cosine of each pair and its gold score. Cells "
        "`a / b / c` as in the post: a = no whitening, b = whitening with all dims, c = "
        f"whitening to k = {main_k}"
        + (" (= D/3, the post's 256 of 768; the author's k for the 384-d SimBERT-small)."
           if 3 * main_k == dim else ".")]
    if len(fit) < 10 * dim:
        lines.append(f"* The Lee whitening is estimated from N = {len(fit)} documents for D = "
                     f"{dim} dimensions (N/D = {len(fit) / dim:.2f}); the post's tasks have "
                     f"thousands of sentences (N ≫ D). Equalising (γ = 1) the directions of such "
                     f"a covariance over-weights its smallest, least well estimated ones.")
    small = sorted({(t.name, len(i)) for t in m.tasks for i in t.fits.values() if len(i) <= dim})
    if small:
        lines.append(
                "* † = degenerate cell: with N ≤ D fitting vectors "
                f"({', '.join(f'{name} N = {n}' for name, n in small)}; D = {dim}) the "
                "covariance has rank ≤ N − 1, and whitening (γ = 1) every direction of that span "
                "maps the N fitted vectors to a regular simplex — all their pairwise cosines equal "
                "−1/(N−1) whatever the data — so the Spearman of that cell is rounding noise, "
                "not a measurement; texts outside the fit (the rated documents of the "
                "'background' fit) are instead dominated by their components along the null "
                "directions, scaled up by as much as eps^−1/2 = 10^6. Only k < N − 1 is "
                "informative there.")
    return lines


def main(argv):
    del argv
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its corpus-loading chatter
    config = _CONFIG.value
    if config is None:
        config = whitening_config.get_config("smoke" if _SMOKE.value else "")
    spec = pw.from_config(config)
    out = os.path.join(_WORKDIR.value, "whitening_table.md") if _SMOKE.value else _OUT.value
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    start = time.perf_counter()
    m = pw.measure(spec, cache_dir=os.path.join(_WORKDIR.value, "embeddings"))
    seconds = time.perf_counter() - start

    dim, main_k, grid = m.dim, spec.whitening.main_k, spec.whitening.grid
    main_rows = [r for r in m.rows if r["fit"] == r["main_fit"]]
    ablation_rows = [r for r in m.rows if r["fit"] != r["main_fit"]]
    small_ks = [k for k in m.ks if k != dim]
    png = os.path.join(os.path.dirname(out), "whitening_grid.png")
    plot_grid(m, grid, png)
    device = f"{jax.device_count()} x {jax.devices()[0].platform}"
    command = " ".join(["python -m experiments.reproduce_whitening_table", *sys.argv[1:]])
    lines = _header(spec, m) + [
        "", "## 1. The post's table shape", "", *_main_table(main_rows, small_ks, main_k, dim),
        "", "## 2. The pattern beside the post (Spearman ×100, docs/whitening.md §4)", "",
        "The post's cells are Chinese tasks with BERT-base (768-d); STS-B is the task closest "
        "to ours, the five-task range shows how much the effect varies. Compare signs and "
        "sizes of b − a and c − a, not absolute scores.",
        "", *_pattern_table(main_rows, main_k, dim), "", *_findings(main_rows, m.hubness, main_k)]
    if ablation_rows:
        lines += ["", "## 3. Lee: what the whitening is fitted on",
                  "", f"Main fit: {spec.data.lee_fit}. Other fits, same cells:", "",
                  "| fit on (N) | pooling | setting | a | b (all dims) | "
                  + " | ".join(f"k = {k}" for k in small_ks) + " |",
                  "|" + " --- |" * (5 + len(small_ks))]
        lines += [f"| {r['fit']} ({r['n_fit']}) | {POOLING_NAMES[r['pooling']]} | "
                  f"β=γ={r['beta']:g} | {r['a']:.2f} | {_cell(r, r['b'], dim, dim)} | "
                  + " | ".join(_cell(r, r["c"][k], k, dim) for k in small_ks) + " |"
                  for r in ablation_rows]
    lines += ["", "## 4. Hubness of the fitted vectors before and after whitening", "",
              f"N_k with k = {spec.hubness.k} ({spec.hubness.metric} distance, self "
              f"excluded, `udm.hubness`) over the fitting set; antihubs = fraction with "
              f"N_k = 0, hub occ. = share of neighbour slots held by points with N_k ≥ "
              f"2k. β=γ=0 with all dims is a rotation: its k-NN graph is the raw one.", "",
              *(_hubness_table(m.hubness) if m.hubness else
                ["(too few points for the k-NN graph)"]),
              "", "## 5. The (β, γ) grid",
              "", f"![grid]({os.path.basename(png)}) — every (β, γ) in "
                  f"{{{', '.join(f'{g:g}' for g in grid)}}}², at k = "
                  f"{', '.join(map(str, m.ks))}. Best grid point per panel (tuned on the "
                  f"evaluation pairs themselves: an optimistic upper bound, not a result):", "",
              *_grid_best_table(m, grid),
              "", f"Command: `{command}`", "",
              f"Run time: {seconds:.0f} s on {device} (encoding {m.encode_seconds:.0f} s; 0 when "
              f"read from the cache in {_WORKDIR.value}/embeddings)."]
    text = "\n".join(lines) + "\n"
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    write_json(os.path.splitext(out)[0] + ".json", dict(
            config=spec.record, command=command, model=MODEL, dim=dim,
            tasks={t.name: dict(m.lengths[t.name], description=t.description,
                                pairs=len(t.pairs), fits={n: len(i) for n, i in t.fits.items()})
                   for t in m.tasks},
            table=m.rows,
            grid=[dict(task=g.task, pooling=g.pooling, fit=g.fit, n_fit=g.n_fit, raw=g.raw,
                       cells=[dict(beta=b, gamma=c, k=int(k), score=v)
                              for (b, c, k), v in sorted(g.scores.items())]) for g in m.grids],
            hubness=m.hubness,
            post={f"{name}, beta=gamma={c}": dict(zip(POST_TASKS, v))
                  for (name, c), v in POST.items()},
            png=png, seconds=seconds, encode_seconds=m.encode_seconds, device=device,
            whitening_dtype="float64"))
    print(text)
    print(f"Wrote {out}, {os.path.splitext(out)[0]}.json and {png}")


if __name__ == "__main__":
    app.run(main)
