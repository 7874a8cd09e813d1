"""Checkpoints with orbax: periodic atomic saves, keep-N, resume from the latest, shape checks.

A checkpoint holds the train state (a pytree of arrays) and a JSON record with the step, the
parameter shapes and anything the caller adds. Orbax writes each step to a temporary directory
and renames it when complete, so a crash mid-save never leaves a half-written checkpoint that a
restart would pick up.
"""
import os
from typing import Any, Dict, Optional

import jax
import orbax.checkpoint as ocp

PyTree = Any


def shape_signature(tree: PyTree) -> Dict[str, list]:
    """{"path/to/leaf": [shape...]} for every array leaf: what must match to restore."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in leaves}


class ShapeMismatchError(ValueError):
    """The workdir holds a checkpoint of a model with other parameter shapes."""


class Checkpointer:
    """Saves and restores `(state, record)` pairs under `directory`.

    Args:
      directory: where step folders are written (created on the first save).
      max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "record"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list:
        return list(self._manager.all_steps())

    def save(self, step: int, state: PyTree, record: Dict[str, Any]) -> None:
        record = dict(record, step=int(step), param_shapes=shape_signature(state.params))
        # The state is replicated, so the host copy is complete on every process; saving numpy
        # arrays spares orbax compiling a small program per sharded leaf, which dominated save
        # time on CPU. In a multi-process run every process calls save (orbax synchronises
        # them) and process 0 alone writes the numpy leaves and the record, so the directory
        # must be one that all processes see (a shared filesystem or a bucket).
        host_state = jax.device_get(state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()

    def read_record(self, step: int) -> Dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
        return restored["record"]

    def check_compatible(self, step: int, params: PyTree) -> None:
        """Raises ShapeMismatchError naming the first differing leaves if shapes differ."""
        saved = self.read_record(step)["param_shapes"]
        wanted = shape_signature(params)
        if saved == wanted:
            return
        missing = sorted(set(saved) ^ set(wanted))
        differing = [f"{k}: checkpoint {saved[k]} vs model {wanted[k]}"
                     for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
        details = "; ".join((differing + [f"only in one of them: {k}" for k in missing])[:5])
        raise ShapeMismatchError(
            f"the checkpoint at step {step} in {self.directory} was written by a model with "
            f"different parameter shapes ({details}). Use a new --workdir or the config that "
            f"wrote it.")

    def restore(self, step: int, abstract_state: PyTree) -> PyTree:
        """Restores the state at `step` onto the shardings carried by `abstract_state`."""
        self.check_compatible(step, abstract_state.params)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"]

    def close(self) -> None:
        self._manager.close()
