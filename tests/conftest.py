import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# compilation_cache_dir="auto" resolves under $XDG_CACHE_HOME: the tests get a folder of their
# own, empty at the start of the session (as on a fresh machine), never the user's cache
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="gmr_test_cache_")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(autouse=True)
def _compilation_cache_per_test():
  """A run turns JAX's persistent compilation cache on for its whole process: a test that
  runs one leaves the options as they were before it, so the cache stays with that test (the
  other tests in the worker compile as usual)."""
  before = {n: getattr(jax.config, n) for n in _CACHE_OPTIONS}
  yield
  if any(getattr(jax.config, n) != v for n, v in before.items()):
    for n, v in before.items():
      jax.config.update(n, v)
    from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.reset_cache()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Each test module's compiled programs are released after it (``jax.clear_caches``): a
  worker process that kept every program of the whole suite grew by gigabytes, and XLA:CPU's
  JIT then failed to map new code ("Cannot allocate memory") in the last modules."""
  yield
  import gc  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  gc.collect()
