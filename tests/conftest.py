import os

# 8 host devices for every sharding test; must precede the first jax import
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# libtpu is installed for AOT compilation: keep the runtime on CPU and let several processes load libtpu
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

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
