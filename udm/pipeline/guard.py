"""What keeps a long run safe: one run per workdir, a clean stop on SIGTERM / SIGINT, and a
restore that steps over an unreadable newest checkpoint.

* `workdir_lock(workdir)`: an advisory lock (`fcntl.flock`) on `<workdir>/.udm.lock`, held for
  the life of the run. The kernel drops it when the process dies, so a `kill -9` never leaves a
  stale lock; a second run on the same workdir is refused with the holder's pid, host and start
  time. Re-entrant within a process (training and evaluation of one run take it in turn). In a
  multi-process run process 0 holds it for the job.
* `StopSignals`: while training, SIGTERM (what a cluster scheduler sends before preempting a job)
  and SIGINT (Ctrl-C) only set a flag; the training loop finishes its step, writes a checkpoint
  of it and stops with `Stopped`. In a multi-process run JAX's preemption service catches SIGTERM
  and the processes agree on the step to save (`multihost_utils.reached_preemption_sync_point`).
* `restore_newest_intact`: when the newest checkpoint cannot be read (a truncated or overwritten
  array file, a damaged `_METADATA`, a missing item), it is moved aside into
  `<workdir>/checkpoints.unreadable/` (never deleted), one line says which step and why, and the
  next newest is tried; with none left the run is refused rather than started from scratch.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
from typing import Any, Callable, Dict, Optional

import jax

from udm import distributed


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir."""


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint of a run was unreadable: nothing to resume from."""


class Stopped(Exception):
    """Training stopped on a signal after checkpointing its current step.

    Attributes:
      signum: the signal (signal.SIGTERM or signal.SIGINT).
      step: the step that was checkpointed.
      exit_code: the conventional exit status, 128 + signum (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step, self.exit_code = signum, step, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; its "
                         f"checkpoint is in {directory}: run the same command to resume")


# --- one run per workdir ------------------------------------------------------------------------

_HELD: Dict[str, list] = {}   # lock path -> [file descriptor, depth] of this process's locks
_HELD_LOCK = threading.Lock()


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "a process that left no details"


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds `<workdir>/.udm.lock` for the block (creating workdir); WorkdirBusyError if another
    process holds it. Process 0 alone locks in a multi-process run."""
    if not distributed.is_primary():
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.realpath(os.path.join(workdir, ".udm.lock"))
    with _HELD_LOCK:
        held = _HELD.get(path)
        if held is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkdirBusyError(
                    f"{workdir} is in use by another udm run ({_holder(path)}); wait for it to "
                    f"finish or stop it, or use another --workdir") from None
            info = dict(pid=os.getpid(), host=socket.gethostname(),
                        started=datetime.datetime.now().isoformat(timespec="seconds"))
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            held = _HELD[path] = [fd, 0]
        held[1] += 1
    try:
        yield
    finally:
        with _HELD_LOCK:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[path]
                fcntl.flock(held[0], fcntl.LOCK_UN)
                os.close(held[0])


# --- a clean stop --------------------------------------------------------------------------------

class StopSignals:
    """Context manager: SIGTERM and SIGINT set `requested` instead of killing the process.

    Handlers can only be installed from the main thread of a single-process run; elsewhere the
    defaults stay. `should_stop(step)` is what the training loop asks after each step; in a
    multi-process run it is True at the step JAX's preemption service agreed on after a SIGTERM
    reached any process (every process must ask at every step).
    """

    def __init__(self):
        self.requested: Optional[int] = None
        self._previous = {}
        self._multiprocess = jax.process_count() > 1
        self._sync_available = True

    def _handle(self, signum, frame):
        del frame
        if self.requested is None:
            self.requested = signum
            print(f"udm: {signal.Signals(signum).name} received; stopping after this step and "
                  f"writing its checkpoint", flush=True)

    def __enter__(self):
        # In a multi-process run SIGTERM belongs to JAX's preemption service, and a Ctrl-C seen by
        # one process alone cannot stop the others at the same step: both keep their defaults.
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def should_stop(self, step: int) -> Optional[int]:
        """The signal to stop for at `step`, or None to go on."""
        if self.requested is not None:
            return self.requested
        if self._multiprocess and self._sync_available:
            from jax.experimental import multihost_utils
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    return signal.SIGTERM
            except RuntimeError as error:  # the preemption service is off (config, old runtime)
                self._sync_available = False
                print(f"udm: no preemption sync in this multi-process run ({_first_line(error)}); "
                      f"SIGTERM stops without a checkpoint", flush=True)
        return None


# --- restore ------------------------------------------------------------------------------------

def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    if not text:
        return type(error).__name__
    line = text[0] if len(text[0]) <= 200 else text[0][:200] + "..."
    return f"{type(error).__name__}: {line}"


def quiet_closed_event_loops() -> None:
    """After a failed read orbax's reader threads report "Event loop is closed" through
    sys.unraisablehook, hundreds of tracebacks for one bad file; drop exactly those, pass
    everything else to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_udm_filter", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._udm_filter = True
    sys.unraisablehook = hook


def restore_newest_intact(open_checkpointer: Callable[[], Any], restore: Callable[[Any, int], Any],
                          *, keep_errors: tuple = ()) -> tuple:
    """(checkpointer, restored value, step) from the newest checkpoint that can be read.

    Args:
      open_checkpointer: `() -> udm.checkpoint.Checkpointer` (opened again after a step is
        moved aside, so that it forgets that step).
      restore: `(checkpointer, step) -> value`; an exception means the step is unreadable,
        except those in keep_errors, which propagate (e.g. a shape mismatch: the checkpoint is
        fine, the config is not).

    Returns:
      (checkpointer, value, step), value and step None when the workdir holds no checkpoint.

    Raises:
      NoIntactCheckpointError: there were checkpoints, and none could be read.
    """
    checkpointer = open_checkpointer()
    moved = []
    while True:
        step = checkpointer.latest_step()
        if step is None:
            break
        try:
            return checkpointer, restore(checkpointer, step), step
        except keep_errors:
            raise
        except Exception as error:  # noqa: BLE001 - any reading failure means "unreadable"
            quiet_closed_event_loops()
            reason = _first_line(error)
            directory = checkpointer.directory
            checkpointer.close()
            target = None
            if distributed.is_primary():
                target = _move_aside(directory, step)
                print(f"udm: checkpoint at step {step} in {directory} cannot be read ({reason}); "
                      f"moved it to {target} and trying the one before", flush=True)
            distributed.barrier(f"udm_checkpoint_moved_{step}")
            moved.append(target or f"step {step}")
            checkpointer = open_checkpointer()
    if moved:
        checkpointer.close()
        raise NoIntactCheckpointError(
            f"no checkpoint in {checkpointer.directory} can be read (moved aside: "
            f"{', '.join(map(str, moved))}); refusing to start again from scratch over this run. "
            f"Inspect or move back those folders, or use a new --workdir")
    return checkpointer, None, None


# What tensorstore / orbax say (inside ValueError / RuntimeError texts) for a failing disk.
_WRITE_FAILURES = [(("No space left", "RESOURCE_EXHAUSTED", "OS error 28"), errno.ENOSPC),
                   (("Read-only file system", "OS error 30"), errno.EROFS),
                   (("Permission denied", "OS error 13"), errno.EACCES)]


def save_checkpoint(checkpointer, step: int, state, record) -> None:
    """`checkpointer.save`, with a failure of the disk raised as the OSError it is (ENOSPC,
    EROFS, EACCES, naming the step's folder) instead of orbax's wrapped text; the unfinished
    save stays in orbax's temporary folder, which is never read as a checkpoint and is removed
    by the next save of that step."""
    try:
        checkpointer.save(step, state, record)
    except Exception as error:  # noqa: BLE001
        quiet_closed_event_loops()
        text = str(error)
        for needles, code in _WRITE_FAILURES:
            if any(needle in text for needle in needles):
                raise OSError(code, os.strerror(code),
                              os.path.join(checkpointer.directory, str(step))) from error
        raise


def _move_aside(directory: str, step: int) -> str:
    """Moves the step folder of `directory` into `<directory>.unreadable/` (a fresh name)."""
    quarantine = directory.rstrip(os.sep) + ".unreadable"
    os.makedirs(quarantine, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(quarantine, f"{step}-{stamp}")
    suffix = 1
    while os.path.exists(target):
        target = os.path.join(quarantine, f"{step}-{stamp}-{suffix}")
        suffix += 1
    shutil.move(os.path.join(directory, str(step)), target)
    return target


__all__ = ["NoIntactCheckpointError", "StopSignals", "Stopped", "WorkdirBusyError",
           "quiet_closed_event_loops", "restore_newest_intact", "save_checkpoint",
           "workdir_lock"]
