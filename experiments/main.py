"""Train, sample and evaluate a udm model from an ml_collections config.

  python -m experiments.main --config=configs/ddpm_digits.py --workdir=workdir/digits \
      --config.train.num_steps=2000 --config.sampler.num_steps=50

Running again on the same workdir resumes from its latest checkpoint; --evaluate_only evaluates
that checkpoint without training. SIGTERM or Ctrl-C checkpoints the current step and exits with
143 / 130. Errors are one `udm:` line on stderr (exit status 1, 2 for a bad command line);
--traceback shows the whole traceback instead.

Several processes (hosts) run the same command, each with its rank; they train one model on
all their devices together (see experiments/launch_local.py for a loopback run):

  python -m experiments.main ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

The three flags may come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
instead; --coordinator_address=auto detects a Cloud TPU pod, SLURM or Open MPI job.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.errors import command_line_error, one_line
from udm import distributed
from udm.pipeline import guard
from udm.pipeline.spec import from_config
from udm.pipeline.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
_EVALUATE_ONLY = flags.DEFINE_bool(
    "evaluate_only", False, "Evaluate the latest checkpoint in --workdir without training.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show whole tracebacks, not one-line errors.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 in a multi-process run, or 'auto'.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override reported in one line."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - every parsing failure is the user's input
        if "--traceback" in argv:
            raise
        print(f"udm: {command_line_error(argv, error)}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    # Orbax reports every save at INFO, and a failed write as pages of ERROR lines and
    # tracebacks: keep the console for the progress bar, the table and one-line errors.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING if _TRACEBACK.value else logging.FATAL)
    if not _TRACEBACK.value:
        guard.quiet_closed_event_loops()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        # First: jax.distributed must start before anything touches a device (the spec's
        # checks ask for the device count).
        distributed.initialize_from_flags_or_env(_COORDINATOR.value, _NUM_PROCESSES.value,
                                                 _PROCESS_ID.value)
        try:
            spec = from_config(_CONFIG.value)
        except ValueError as error:  # a bad value: the message names the field
            if _TRACEBACK.value:
                raise
            print(f"udm: {one_line(error)}", file=sys.stderr)
            sys.exit(2)
        train_and_evaluate(spec, _WORKDIR.value, evaluate_only=_EVALUATE_ONLY.value)
    except guard.Stopped as stopped:  # SIGTERM / Ctrl-C: the step is checkpointed, said so
        sys.exit(stopped.exit_code)
    except Exception as error:  # noqa: BLE001
        if _TRACEBACK.value:
            raise
        expected = isinstance(error, (ValueError, OSError, FloatingPointError,
                                      guard.WorkdirBusyError, guard.NoIntactCheckpointError))
        print(f"udm: {one_line(error)}" + ("" if expected else " (--traceback for details)"),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
