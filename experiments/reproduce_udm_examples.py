"""The applications post's examples (docs/processes.md B1-B4, C1-C2) in one table: one model per process,
each trained and sampled through the same `train_and_evaluate`, the same scan sampler and the
same loss, with the baseline design (fresh corruption of x0_hat) beside the improved one.

Images (8x8 digits, FD-digits): hot diffusion (DDPM / DDIM), cold blur, heat dissipation, each of
the last two also with a little noise on the collapsed prior state. Text (the arithmetic
language "ab+cd=efg", validity checked exactly; perplexity of samples under a 3-gram model of
held-out equations; distinct-2): masking, edit v1 / v2, D3PM uniform / absorbing, the encoding
model (with and without its encoder-norm guard); English (Lee corpus windows: perplexity,
distinct-n): masking, edit v1 / v2, D3PM uniform / absorbing, encoding.

  python -m experiments.reproduce_udm_examples --workdir=workdir
  python -m experiments.reproduce_udm_examples --smoke --workdir=/tmp/udm_examples   # seconds

Each model lives in <workdir>/<model> (the configs' own default workdir names, so models trained
with experiments.main are reused); training resumes from checkpoints and a finished model's rows
are kept in <workdir>/<model>/udm_rows.json. Writes experiments/results/udm_examples.{md,json}
(or into the workdir with --smoke).
"""
import json
import os
import time

from absl import app, flags, logging

from configs import cold_digits, ddpm_digits, heat_digits, token_base
from experiments.common import write_json
from udm.pipeline import spec as spec_lib
from udm.pipeline import train

_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Parent of the per-model workdirs.")
_MODELS = flags.DEFINE_list("models", None, "Subset of models to run (default: all).")
_TEXT_STEPS = {
    "arithmetic": flags.DEFINE_integer("arithmetic_train_steps", 20000,
                                       "Training steps of the arithmetic-language models."),
    "lee": flags.DEFINE_integer("lee_train_steps", 3000, "Training steps of the English models."),
}
_SMOKE = flags.DEFINE_bool("smoke", False, "Smoke configs: checks the script runs.")
_OUT = flags.DEFINE_string("out", "experiments/results/udm_examples", "Output prefix (.md, .json).")


def _image(module, variant=""):
    def config():
        c = module.get_config(",".join(v for v in (variant, "smoke" if _SMOKE.value else "") if v))
        if module is ddpm_digits:
            c.eval.samplers = ("ddpm", "ddim")
            c.eval.step_counts = (5,) if _SMOKE.value else (20, 100)
        return c
    return config


def _text(process, data="arithmetic", **process_fields):
    def config():
        c = token_base.get_config(process, data, "smoke" if _SMOKE.value else "")
        c.process.update(process_fields)
        if not _SMOKE.value:
            c.train.num_steps = _TEXT_STEPS[data].value
        if process == "edit_v1":  # not invertible: only the baseline design exists (docs/processes.md B3)
            c.sampler.name, c.eval.samplers = "baseline", ("baseline",)
        return c
    return config


# model -> (process label, data label, config builder)
MODELS = {
    "ddpm_digits": ("hot (Gaussian)", "digits", _image(ddpm_digits)),
    "cold_digits": ("cold (blur)", "digits", _image(cold_digits)),
    "cold_digits_noisy": ("cold (blur), noisy prior", "digits", _image(cold_digits, "noisy")),
    "heat_digits": ("heat dissipation", "digits", _image(heat_digits)),
    "heat_digits_noisy": ("heat dissipation, noisy prior", "digits", _image(heat_digits, "noisy")),
    "masking_arithmetic": ("masking", "arithmetic", _text("masking")),
    "edit_v1_arithmetic": ("edit v1", "arithmetic", _text("edit_v1")),
    "edit_arithmetic": ("edit v2", "arithmetic", _text("edit")),
    "d3pm_uniform_arithmetic": ("D3PM uniform", "arithmetic", _text("d3pm_uniform")),
    "d3pm_absorbing_arithmetic": ("D3PM absorbing", "arithmetic", _text("d3pm_absorbing")),
    "encoding_arithmetic": ("encoding", "arithmetic", _text("encoding")),
    "encoding_unguarded_arithmetic": ("encoding, no norm guard", "arithmetic",
                                      _text("encoding", normalize=False)),
    "masking_lee": ("masking", "lee", _text("masking", "lee")),
    "edit_v1_lee": ("edit v1", "lee", _text("edit_v1", "lee")),
    "edit_lee": ("edit v2", "lee", _text("edit", "lee")),
    "d3pm_uniform_lee": ("D3PM uniform", "lee", _text("d3pm_uniform", "lee")),
    "d3pm_absorbing_lee": ("D3PM absorbing", "lee", _text("d3pm_absorbing", "lee")),
    "encoding_lee": ("encoding", "lee", _text("encoding", "lee")),
}
DESIGN = {"baseline": "baseline (naive)", "improved": "improved", "ddpm": "DDPM",
          "ddim (eta=0)": "DDIM"}


def run_model(name: str) -> dict:
    label, data, make_config = MODELS[name]
    workdir = os.path.join(_WORKDIR.value, name)
    rows_path = os.path.join(workdir, "udm_rows.json")
    config = make_config()
    if os.path.exists(rows_path):
        cached = json.load(open(rows_path))
        if cached["train_steps"] == config.train.num_steps:
            print(f"{name}: rows already computed, read from {rows_path}")
            return cached
    config.train.progress_bar = True
    start = time.perf_counter()
    results = train.train_and_evaluate(spec_lib.from_config(config), workdir)
    result = dict(model=name, process=label, data=data, train_steps=config.train.num_steps,
                  num_samples=results["num_samples"], seconds=time.perf_counter() - start,
                  rows=results["rows"], final_metrics=_last_metrics(workdir))
    write_json(rows_path, result)
    return result


def _last_metrics(workdir: str) -> dict:
    """The last training log line (loss, and a process's diagnostics such as encoder_rms)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1])


def _encoder_note(results) -> list:
    """One line on the encoders of the encoding models (the collapse guard, docs/processes.md B5)."""
    parts = [f"{r['process']} ({r['data']}): RMS per latent dimension "
             f"{r['final_metrics']['encoder_rms']:.2f}, closest two tokens "
             f"{r['final_metrics']['encoder_min_distance']:.2f} apart"
             for r in results if "encoder_rms" in r.get("final_metrics", {})]
    if not parts:
        return []
    return ["", "Encoders after training (the latent noise has std 1 per dimension): "
            + "; ".join(parts) + "."]


def _cell(row, key, fmt):
    return fmt.format(row[key]) if row.get(key) is not None else "–"


def markdown(results) -> str:
    image = [r for r in results if r["data"] == "digits"]
    text = [r for r in results if r["data"] == "arithmetic"]
    english = [r for r in results if r["data"] == "lee"]
    lines = []
    if image:
        real = image[0]["rows"][0]
        n = image[0]["num_samples"]
        lines += [f"Images: FD-digits ↓ of {n} samples against the held-out digits ({real['fd']:.2f} "
                  f"for {n} real training digits); one UNet per process "
                  f"({image[0]['train_steps']} steps).", "",
                  "| process | design | steps K | FD-digits ↓ | largest class fraction | "
                  "memorised fraction |", "|---|---|---|---|---|---|"]
        for res in image:
            for row in res["rows"][1:]:
                lines.append(f"| {res['process']} | {DESIGN.get(row['samples'], row['samples'])} "
                             f"| {row['steps']} | {_cell(row, 'fd', '{:.2f}')} | "
                             f"{_cell(row, 'max_class_fraction', '{:.3f}')} | "
                             f"{_cell(row, 'memorised_fraction', '{:.3f}')} |")
    if text:
        real = text[0]["rows"][0]
        lines += ["", f"Text: the arithmetic language (9 tokens \"ab+cd=efg\", vocabulary 12), "
                  f"{text[0]['num_samples']} samples per row; {text[0]['train_steps']} training "
                  f"steps of the TokenDenoiser per process. "
                  f"Real training equations: validity {real['validity']:.3f}, perplexity "
                  f"{real['sample_perplexity']:.2f}, distinct-2 {real['distinct_2']:.3f}; uniform "
                  f"random strings: perplexity {real['random_perplexity']:.2f}.", "",
                  "| process | design | steps K | validity ↑ | perplexity ↓ | distinct-2 | "
                  "unique fraction | copies of training equations |", "|---|---|---|---|---|---|---|---|"]
        for res in text:
            for row in res["rows"][1:]:
                lines.append(f"| {res['process']} | {DESIGN.get(row['samples'], row['samples'])} "
                             f"| {row['steps']} | {_cell(row, 'validity', '{:.3f}')} | "
                             f"{_cell(row, 'sample_perplexity', '{:.2f}')} | "
                             f"{_cell(row, 'distinct_2', '{:.3f}')} | "
                             f"{_cell(row, 'unique_fraction', '{:.3f}')} | "
                             f"{_cell(row, 'train_copy_fraction', '{:.3f}')} |")
    if english:
        real = english[0]["rows"][0]
        lines += ["", f"English: gensim's Lee corpus as 32-character windows (vocabulary 41), "
                  f"{english[0]['num_samples']} samples per row, {english[0]['train_steps']} "
                  f"training steps. Real training windows: perplexity under the held-out 3-gram "
                  f"{real['sample_perplexity']:.2f}, distinct-2 {real['distinct_2']:.3f}; uniform "
                  f"random strings {real['random_perplexity']:.2f}.", "",
                  "| process | design | steps K | perplexity ↓ | distinct-1 | distinct-2 | "
                  "copies of training windows |", "|---|---|---|---|---|---|---|"]
        for res in english:
            for row in res["rows"][1:]:
                lines.append(f"| {res['process']} | {DESIGN.get(row['samples'], row['samples'])} "
                             f"| {row['steps']} | {_cell(row, 'sample_perplexity', '{:.2f}')} | "
                             f"{_cell(row, 'distinct_1', '{:.3f}')} | "
                             f"{_cell(row, 'distinct_2', '{:.3f}')} | "
                             f"{_cell(row, 'train_copy_fraction', '{:.3f}')} |")
    lines += _encoder_note(results)
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    names = _MODELS.value or list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise app.UsageError(f"unknown models {unknown}; valid: {', '.join(MODELS)}")
    results = [run_model(name) for name in names]
    table = markdown(results)
    out = os.path.join(_WORKDIR.value, "udm_examples") if _SMOKE.value else _OUT.value
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(table)
    write_json(out + ".json", dict(results=results))
    print(table)


if __name__ == "__main__":
    app.run(main)
