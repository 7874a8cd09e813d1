"""Train, sample and evaluate a udm model from an ml_collections config.

  python -m experiments.main --config=configs/ddpm_digits.py --workdir=workdir/digits \
      --config.train.num_steps=2000 --config.sampler.num_steps=50

Running again on the same workdir resumes from its latest checkpoint.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from udm.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    # Orbax reports every save at INFO; keep the console for the progress bar and the table.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
