"""Conditional generation on the digits and the arithmetic language: guidance and inpainting.

Four tables, each through the pipeline's conditioned sampler (config.sampler.guidance_scale,
config.sampler.inpaint; docs/guidance.md, docs/inpainting.md):

1. Guidance: the class-conditional digits model (configs/ddpm_digits.py:conditional, label
   dropout 0.1) asked for class i mod 10 at guidance scales 0, 1, 2, 4 with DDIM (50 steps) and
   DPM-Solver++(2M) (10 steps): the evaluation classifier's accuracy on the requested class, FD
   against the held-out digits, the mean over classes of the per-class FD, and the entropy of the
   predicted-class histogram; one sample grid per scale (a row per class).
2. Inpainting: the top half of each held-out digit known, the bottom half filled by the hot
   (Gaussian; DDIM 50 and DDPM 250 steps), cold (blur) and heat models (the improved sampler,
   20 steps) through their own correct step; against pasting the known half onto
   unconditional samples at the end.
   FD against the held-out digits, the classifier's agreement with the completed digit's label,
   the mean |change| of the known pixels (0 where the sampler ends on an x_0 estimate).
3. Arithmetic infilling: given "ab+cd=" of held-out equations, the masking, edit (v2), D3PM
   absorbing and D3PM uniform models fill in the sum ("prefix:6"): the fraction of exact sums at
   each step count of the model's config, against the unconditional validity.
4. English infilling: the same four processes on the Lee corpus complete the second half of
   held-out 32-character windows ("prefix:16"): the 3-gram perplexity of the filled characters,
   against the same positions of unconditional samples and of the real windows.

  python -m experiments.reproduce_conditional --workdir=workdir
  python -m experiments.reproduce_conditional --smoke --workdir=/tmp/conditional   # tiny models

Models live in <workdir>/<model> with the names of experiments.reproduce_udm_examples (so its
trained models are reused) and <workdir>/ddpm_digits_conditional; training resumes from
checkpoints and every finished cell is kept in <workdir>/conditional_cells_<table>.json. Writes
experiments/results/conditional.{md,json} and conditional_guidance.png,
conditional_inpainting.png (or into the workdir with --smoke).
"""
import json
import os
from typing import Dict, List

import numpy as np
from absl import app, flags

from configs import cold_digits, ddpm_digits, ddpm_mnist5k, heat_digits, token_base
from experiments.common import write_json
from udm import metrics
from udm.pipeline import conditional
from udm.pipeline import evaluate as eval_lib
from udm.pipeline import spec as spec_lib
from udm.pipeline import train
from udm.pipeline.classifier import load_or_train_classifier

_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Parent of the per-model workdirs.")
_PARTS = flags.DEFINE_list("parts", ["guidance", "guidance_mnist5k", "inpainting",
                                     "infilling", "lee"], "Tables to make.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 500, "Samples per image row (digits).")
_MNIST_SAMPLES = flags.DEFINE_integer("mnist_samples", 300, "Samples per MNIST row.")
_SCALES = flags.DEFINE_list("scales", ["0", "1", "2", "4"], "Guidance scales.")
_ARITHMETIC_STEPS = flags.DEFINE_integer("arithmetic_train_steps", 20000,
                                         "Training steps of the arithmetic models.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny models and budgets: checks the script runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/conditional", "Output prefix.")

GUIDED_SAMPLERS = [("DDIM", "ddim", 50), ("DPM-Solver++(2M)", "dpm_solver_pp_2m", 10)]
IMAGE_MODELS = [("hot (Gaussian), DDIM", "ddpm_digits", ddpm_digits, "ddim", 50),
                ("hot (Gaussian), DDPM", "ddpm_digits", ddpm_digits, "ddpm", 250),
                ("cold (blur), improved", "cold_digits", cold_digits, "improved", 20),
                ("heat dissipation, improved", "heat_digits", heat_digits, "improved", 20)]
TEXT_MODELS = [("masking", "masking"), ("edit v2", "edit"), ("D3PM absorbing", "d3pm_absorbing"),
               ("D3PM uniform", "d3pm_uniform")]


class Model:
    """A trained model of a config (resumed from its workdir) and what sampling needs."""

    def __init__(self, config, name: str):
        config.train.progress_bar = True
        self.spec = spec_lib.from_config(config)
        self.workdir = os.path.join(_WORKDIR.value, name)
        self.exp = train.build(self.spec)
        self.params = train.train(self.spec, self.workdir, experiment=self.exp).ema_params
        _, self.eval_apply = train.make_apply_fns(self.exp.model)

    def sample(self, n: int, **sampler):
        """(samples [n, ...], Conditions or None) of one sampler row under `sampler` settings."""
        spec = self.spec.replace(sampler=sampler)
        row = (spec.sampler.name, spec.sampler.num_steps)
        generated, conditions = eval_lib.sample_rows(
            spec, self.workdir, [row], process=self.exp.process, eval_apply=self.eval_apply,
            params=self.params, dataset=self.exp.dataset, mesh=self.exp.mesh,
            sample_key=self.exp.sample_key, num_samples=n)
        return generated[row][0], conditions


def _keep(name: str, images: np.ndarray) -> None:
    """Keeps the images of a figure panel beside the cells (a rerun draws every panel)."""
    folder = os.path.join(_WORKDIR.value, "conditional_panels")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, name + ".tmp.npy"), images)
    os.replace(os.path.join(folder, name + ".tmp.npy"), os.path.join(folder, name + ".npy"))


def _kept(name: str):
    path = os.path.join(_WORKDIR.value, "conditional_panels", name + ".npy")
    return np.load(path) if os.path.exists(path) else None


def _variant(*tokens) -> str:
    return ",".join(t for t in (*tokens, "smoke" if _SMOKE.value else "") if t)


class Cells:
    """Finished cells, kept in a JSON file so that an interrupted run resumes."""

    def __init__(self, path: str):
        self.path = path
        self.values = json.load(open(path)) if os.path.exists(path) else {}

    def get(self, key: str, compute):
        if key not in self.values:
            self.values[key] = compute()
            write_json(self.path, self.values)
        return self.values[key]


def _per_class_fd(features, labels, reference, reference_labels) -> float:
    """Mean over classes of the FD between the samples of class c and the held-out ones."""
    return float(np.mean([metrics.frechet_distance(features[labels == c],
                                                   reference[reference_labels == c])
                          for c in np.unique(reference_labels)]))


def guidance_table(cells: Cells, n: int, out_dir: str, dataset: str = "digits") -> List[Dict]:
    module = {"digits": ddpm_digits, "mnist5k": ddpm_mnist5k}[dataset]
    model = Model(module.get_config(_variant("conditional")), f"ddpm_{dataset}_conditional")
    data = model.exp.dataset
    classifier = load_or_train_classifier(os.path.join(_WORKDIR.value, "classifiers"), data,
                                          seed=model.spec.seed,
                                          num_steps=model.spec.eval.classifier_steps)
    reference = classifier.features(data.test_images)

    def cell(label, name, k, scale):
        samples, conditions = model.sample(n, name=name, num_steps=k, guidance_scale=scale)
        features, probs = classifier.features(samples), classifier.probs(samples)
        if name == GUIDED_SAMPLERS[0][1]:
            order = np.concatenate([np.flatnonzero(conditions.labels == c)[:10]
                                    for c in range(10)])
            _keep(f"guidance_{dataset}_{scale:g}", samples[order])
        return dict(
            sampler=label, steps=k, scale=scale,
            accuracy=float(np.mean(np.argmax(probs, -1) == conditions.labels)),
            fd=float(metrics.frechet_distance(features, reference)),
            per_class_fd=_per_class_fd(features, conditions.labels, reference, data.test_labels),
            histogram_entropy=metrics.class_statistics(probs)["histogram_entropy_nats"])

    rows = [cells.get(f"guidance/{dataset}/{name}/{k}/{scale}",
                      lambda: cell(label, name, k, scale))
            for label, name, k in GUIDED_SAMPLERS for scale in map(float, _SCALES.value)]
    grids = [(scale, _kept(f"guidance_{dataset}_{scale:g}")) for scale in map(float, _SCALES.value)]
    grids = [(scale, images) for scale, images in grids if images is not None]
    if grids:
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(grids), figsize=(3 * len(grids), 3.4))
        for ax, (scale, images) in zip(np.atleast_1d(axes), grids):
            ax.imshow(metrics.image_grid(images, ncols=10), cmap="gray", vmin=-1, vmax=1)
            ax.set_title(f"guidance scale {scale:g}")
            ax.axis("off")
        fig.tight_layout()
        suffix = "" if dataset == "digits" else f"_{dataset}"
        fig.savefig(os.path.join(out_dir, f"conditional_guidance{suffix}.png"), dpi=120)
        plt.close(fig)
    return rows


def inpainting_table(cells: Cells, n: int, out_dir: str) -> List[Dict]:
    rows = []
    for label, name, module, sampler, k in IMAGE_MODELS:
        k = 5 if _SMOKE.value else k
        model = Model(module.get_config(_variant()), name)
        data = model.exp.dataset
        classifier = load_or_train_classifier(os.path.join(_WORKDIR.value, "classifiers"), data,
                                              seed=model.spec.seed,
                                              num_steps=model.spec.eval.classifier_steps)
        reference = classifier.features(data.test_images)

        def cell(method):
            if method == "correct step":
                samples, c = model.sample(n, name=sampler, num_steps=k, inpaint="top_half")
                _keep(f"inpainting_{name}_{sampler}", np.stack([c.known[:16], samples[:16]]))
            else:  # the known half pasted onto unconditional samples at the end
                free, _ = model.sample(n, name=sampler, num_steps=k)
                source = np.arange(n) % len(data.test_images)
                c = conditional.Conditions(
                    [], data.test_labels[source], data.test_images[source],
                    conditional.known_mask("top_half", data.test_images.shape[1:]))
                samples = np.where(c.mask, c.known, free)
            scores = eval_lib.conditioning_scores(samples, c, classifier)
            return dict(process=label, steps=k, method=method,
                        fd=float(metrics.frechet_distance(classifier.features(samples),
                                                          reference)),
                        agreement=scores["class_accuracy"], known_changed=scores["known_changed"])

        rows += [cells.get(f"inpainting/{name}/{sampler}/{k}/{method}", lambda: cell(method))
                 for method in ("correct step", "paste at the end")]
    panels = [(label, _kept(f"inpainting_{name}_{sampler}"))
              for label, name, _, sampler, _ in IMAGE_MODELS]
    panels = [(label, pair[0], pair[1]) for label, pair in panels if pair is not None]
    if panels:
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(len(panels), 2, figsize=(6, 1.8 * len(panels)), squeeze=False)
        for (label, known, filled), ax in zip(panels, axes):
            shown = np.where(np.arange(known.shape[1])[None, :, None, None] < known.shape[1] // 2,
                             known, 0.0)
            for a, images, title in ((ax[0], shown, "known top half"), (ax[1], filled, label)):
                a.imshow(metrics.image_grid(images, ncols=8), cmap="gray", vmin=-1, vmax=1)
                a.set_title(title, fontsize=9)
                a.axis("off")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "conditional_inpainting.png"), dpi=120)
        plt.close(fig)
    return rows


def infilling_table(cells: Cells, data_name: str) -> List[Dict]:
    """Arithmetic: exact sums of "ab+cd=" completions. Lee: 3-gram perplexity of the second
    half of 32-character windows given the first (held-out windows), under the model of the
    held-out text; beside each, the same figure of unconditional samples."""
    rows = []
    for label, process in TEXT_MODELS:
        config = token_base.get_config(process, data_name, _variant())
        if not _SMOKE.value and data_name == "arithmetic":
            config.train.num_steps = _ARITHMETIC_STEPS.value
        model = Model(config, f"{process}_{data_name}")
        data = model.exp.dataset
        n = min(40 if _SMOKE.value else 512, len(data.test_tokens))
        known = 6 if data_name == "arithmetic" else data.seq_len // 2
        reference = metrics.fit_reference_model(data)

        def figure(k, inpaint):
            samples, _ = model.sample(n, num_steps=k, inpaint=inpaint)
            if data_name == "arithmetic":
                return metrics.text_report(samples, data, reference, seed=0)["validity"]
            return reference.span_perplexity(samples, known)

        for k in model.spec.eval.step_counts:
            rows.append(cells.get(f"infilling/{data_name}/{process}/{k}", lambda: dict(
                process=label, sampler=model.spec.sampler.name, steps=k, samples=n,
                known=known, filled=figure(k, f"prefix:{known}"), unconditional=figure(k, ""),
                real=(None if data_name == "arithmetic" else
                      reference.span_perplexity(data.test_tokens[:n], known)))))
    return rows


_GUIDANCE_COLUMNS = [
    ("sampler", "sampler", "{}"), ("steps", "steps", "{}"), ("guidance scale", "scale", "{:g}"),
    ("accuracy of the requested class ↑", "accuracy", "{:.3f}"), ("FD ↓", "fd", "{:.2f}"),
    ("per-class FD ↓", "per_class_fd", "{:.2f}"),
    ("class-histogram entropy (max 2.303)", "histogram_entropy", "{:.3f}")]


def _table(rows, columns) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in columns) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    out = os.path.join(_WORKDIR.value, "conditional") if _SMOKE.value else _OUT.value
    out_dir = os.path.dirname(out) or "."
    os.makedirs(out_dir, exist_ok=True)

    def cells(part):  # one file per table, so that tables can be made by parallel runs
        return Cells(os.path.join(_WORKDIR.value, f"conditional_cells_{part}.json"))

    n = 40 if _SMOKE.value else _NUM_SAMPLES.value
    command = "python -m experiments.reproduce_conditional" + (" --smoke" if _SMOKE.value else "")
    text, payload = [f"Made by `{command}`."], {}
    if "guidance" in _PARTS.value:
        payload["guidance"] = rows = guidance_table(cells("guidance"), n, out_dir)
        text += [f"## Classifier-free guidance on the digits\n\n{n} samples per row, sample i "
                 f"asked for class i mod 10, the same x_T in every row; FD against the held-out "
                 f"digits in the evaluation classifier's features; per-class FD: the mean over "
                 f"the ten classes of the FD between the samples of a class and the held-out "
                 f"digits of that class. Grid: `conditional_guidance.png` (DDIM, a row per "
                 f"class).",
                 _table(rows, _GUIDANCE_COLUMNS)]
    if "guidance_mnist5k" in _PARTS.value:
        n_mnist = n if _SMOKE.value else _MNIST_SAMPLES.value
        payload["guidance_mnist5k"] = rows = guidance_table(cells("guidance_mnist5k"), n_mnist,
                                                            out_dir, "mnist5k")
        text += [f"## Classifier-free guidance on MNIST (mnist5k)\n\nThe same on the 28x28 "
                 f"digits: configs/ddpm_mnist5k.py:conditional, {n_mnist} samples "
                 f"per row, scored in the features of the mnist5k evaluation classifier. Grid: "
                 f"`conditional_guidance_mnist5k.png`.",
                 _table(rows, _GUIDANCE_COLUMNS)]
    if "inpainting" in _PARTS.value:
        payload["inpainting"] = rows = inpainting_table(cells("inpainting"), n, out_dir)
        text += [f"## Inpainting the digits\n\nThe top half of each of {n} held-out digits "
                 f"known (cycling through the held-out set), the bottom half sampled. FD against "
                 f"the held-out digits (which contain the known halves, so it favours every row "
                 f"alike); agreement: the classifier's predicted class equals the completed "
                 f"digit's label. Grid: `conditional_inpainting.png`.",
                 _table(rows, [("process, sampler", "process", "{}"), ("steps", "steps", "{}"),
                               ("conditioning", "method", "{}"), ("FD ↓", "fd", "{:.2f}"),
                               ("label agreement ↑", "agreement", "{:.3f}"),
                               ("known pixels, mean |change|", "known_changed", "{:.2e}")])]
    if "infilling" in _PARTS.value:
        payload["infilling"] = rows = infilling_table(cells("infilling"), "arithmetic")
        text += ["## Arithmetic infilling\n\n\"ab+cd=\" of held-out equations known, the sum "
                 f"filled ({rows[0]['samples']} per row). Exact: the fraction of filled "
                 "equations that are correct; unconditional validity: the fraction of correct "
                 "equations among as many unconditional samples of the same model and sampler.",
                 _table(rows, [("process", "process", "{}"), ("sampler", "sampler", "{}"),
                               ("steps", "steps", "{}"),
                               ("exact sums, infilled ↑", "filled", "{:.3f}"),
                               ("valid, unconditional", "unconditional", "{:.3f}")])]
    if "lee" in _PARTS.value:
        payload["lee"] = rows = infilling_table(cells("lee"), "lee")
        text += [f"## Infilling English (the Lee corpus)\n\nThe first {rows[0]['known']} "
                 f"characters of held-out {2 * rows[0]['known']}-character windows known, the "
                 f"rest filled ({rows[0]['samples']} per row); perplexity of the filled "
                 f"characters under the character 3-gram model of the held-out text, each given "
                 f"the two characters before it. The same characters of the held-out windows "
                 f"themselves score {rows[0]['real']:.2f} (lower is likelier; the 3-gram model "
                 f"was fitted on them).",
                 _table(rows, [("process", "process", "{}"), ("sampler", "sampler", "{}"),
                               ("steps", "steps", "{}"),
                               ("3-gram perplexity, infilled ↓", "filled", "{:.2f}"),
                               ("same positions, unconditional", "unconditional", "{:.2f}")])]
    with open(out + ".md.tmp", "w") as f:
        f.write("\n\n".join(text) + "\n")
    os.replace(out + ".md.tmp", out + ".md")
    write_json(out + ".json", dict(command=command, **payload))
    print("\n\n".join(text))


if __name__ == "__main__":
    app.run(main)
