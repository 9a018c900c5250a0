"""convert -> model folder -> load gives exactly the imported model."""
import numpy as np

from bitembed_jax.convert.hf_import import convert, import_hf
from bitembed_jax.io.load import load_model_dir


def test_convert_and_load_exact(tiny_gemma3, tmp_path):
    out = convert(tiny_gemma3, str(tmp_path / "enc"), mode="bitnet", norm="subln")
    model, cfg = load_model_dir(out)
    ref, ref_cfg = import_hf(tiny_gemma3, mode="bitnet", norm="subln")
    assert cfg == ref_cfg
    ids = np.arange(2, 26, dtype=np.int32).reshape(2, 12)
    mask = np.ones_like(ids)
    np.testing.assert_array_equal(np.asarray(model(ids, mask).last_hidden_state),
                                  np.asarray(ref(ids, mask).last_hidden_state))
