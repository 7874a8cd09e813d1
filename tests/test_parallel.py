"""udm.parallel and udm.distributed inside one process (8 fake devices); the multi-process runs
(and the killed-process test) are in test_multiprocess.py."""
import jax
import numpy as np
import pytest

from udm import distributed, parallel


def test_single_process_owns_the_whole_batch_and_places_it_like_device_put():
    mesh = parallel.data_mesh()
    assert parallel.process_rows(16, mesh) == slice(0, 16)
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    ours = parallel.global_batch(x, mesh, 16)
    theirs = jax.device_put(x, parallel.batch_sharded(mesh))
    assert ours.sharding == theirs.sharding
    for a, b in zip(ours.addressable_shards, theirs.addressable_shards):
        assert a.device == b.device and a.index == b.index
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    np.testing.assert_array_equal(parallel.to_host(ours), x)


def test_mesh_keeps_device_order_in_one_process():
    assert list(parallel.data_mesh().devices) == jax.devices()


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_processes=2), "missing: coordinator_address, process_id"),
    (dict(coordinator_address="localhost:1", num_processes=2, process_id=2),
     r"process_id must be in \[0, num_processes=2\), got 2"),
])
def test_incomplete_multi_process_settings_fail_naming_what_is_missing(kwargs, message,
                                                                      monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=message):
        distributed.initialize_from_flags_or_env(**kwargs)


def test_single_process_settings_are_a_no_op(monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize_from_flags_or_env() is False
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "1")
    assert distributed.initialize_from_flags_or_env("localhost:1", None, 0) is False
    assert distributed.is_primary() and jax.process_count() == 1
