import os
import shutil
import tempfile

# 8 host devices for every sharding test; must precede the first jax import. The tests compile hundreds of tiny
# programs and run each a few times: XLA's CPU backend without its LLVM optimizations compiles them ~20% faster
# (the programs of a comparison are all compiled so; the TPU programs of test_aot are not affected).
_FLAGS = os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if _flag.split("=")[0] not in _FLAGS:
        _FLAGS = f"{_FLAGS} {_flag}".strip()
os.environ["XLA_FLAGS"] = _FLAGS
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# libtpu is installed for AOT compilation: keep the runtime on CPU and let several processes load libtpu
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# One XLA compilation cache for this test run, shared by the xdist workers and the CLI processes they start: the
# suite compiles the same tiny programs in many processes (a run, its resume, every process of a pod). A fresh
# folder per run, so each program is still compiled once by every run.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                                f"bitembed-jax-tests-xla-{os.getpid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from tests import hf_fixtures  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    """A random tiny Qwen3ForCausalLM folder (names carry the ``model.`` prefix)."""
    return hf_fixtures.make_tiny_hf("qwen3", str(tmp_path_factory.mktemp("tiny_qwen3")))


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory):
    """A random tiny Gemma3TextModel folder with a sliding window shorter than the test sequences."""
    return hf_fixtures.make_tiny_hf("gemma3", str(tmp_path_factory.mktemp("tiny_gemma3")))


# The files that take minutes, longest first (from --durations on 2 cores). With --dist loadfile a file runs on one
# worker: started first, they no longer leave the suite ending on one long file while the other workers idle.
LONGEST_FILES = ("test_multihost.py", "test_aot.py", "test_train.py", "test_real_gemma3.py", "test_finetune.py",
                 "test_data_pod.py", "test_resume.py", "test_readme.py", "test_quant_warmup.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist would order files by their number of tests instead
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_sessionfinish(session):
    if _OWN_CACHE and not hasattr(session.config, "workerinput"):  # the run's controller: its workers are done
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
