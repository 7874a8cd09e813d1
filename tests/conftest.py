"""Test setup: eight fake CPU devices and strict broadcasting, set before JAX starts."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Tests compile the same small programs many times (each smoke run builds the same train step);
# a persistent compilation cache shared by the xdist workers compiles each of them once.
# Set as an environment variable too, so subprocesses (the CLI test, the notebook kernel) share it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_collection_modifyitems(config, items):
    """test_train.py first: its end-to-end tests (`make test-slow`) share one training run (a
    module-scoped fixture), and xdist's first chunk of tests (a quarter of each worker's share)
    then holds all of them, so one worker runs them and the fixture once, at the start rather
    than late in the run."""
    first = [item for item in items if item.path.name == "test_train.py"]
    items[:] = first + [item for item in items if item.path.name != "test_train.py"]
