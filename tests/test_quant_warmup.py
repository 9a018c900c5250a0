"""Gradual quantization: the blended forward against numpy, mix 0 = the fp model, mix 1 = BitNet, and a
training run that starts from the fp model's loss and ends on the plain BitNet step."""
import json
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.convert.hf_import import convert
from bitembed_jax.quant.warmup import blended_matmul, mix_at, set_quant_mix
from bitembed_jax.train.config_checks import validate_config
from bitembed_jax.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_blended(x, w, mix, bits=8):
    """Plain numpy: per-token absmax fake quantization of x, absmean ternary of w, both blended by mix."""
    qmax = 2 ** (bits - 1) - 1
    s = qmax / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    qx = np.clip(np.round(x * s), -qmax - 1, qmax) / s
    gamma = np.abs(w).mean() + 1e-5
    qw = np.clip(np.round(w / gamma), -1, 1) * gamma
    return (x + mix * (qx - x)) @ (w + mix * (qw - w)), x + mix * (qx - x), w + mix * (qw - w)


@pytest.mark.parametrize("mix", [0.0, 0.3, 1.0])
def test_blended_matmul_matches_numpy_with_straight_through_grads(mix):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)
    w = (0.05 * rng.normal(size=(16, 8))).astype(np.float32)
    g = rng.normal(size=(3, 5, 8)).astype(np.float32)
    want, xm, wm = np_blended(x.astype(np.float64), w.astype(np.float64), mix)
    m = jnp.float32(mix)
    got = blended_matmul(jnp.asarray(x), jnp.asarray(w), m, bits=8, per_row=False, dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    dx, dw = jax.grad(lambda a, b: jnp.sum(blended_matmul(a, b, m, bits=8, per_row=False, dtype=jnp.float32) * g),
                      argnums=(0, 1))(jnp.asarray(x), jnp.asarray(w))
    # straight-through: the gradients of the blended operands' product, passed to the latent ones unchanged
    np.testing.assert_allclose(np.asarray(dx), g @ wm.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), np.einsum("bti,bto->io", xm, g), rtol=1e-4, atol=1e-4)


def test_quant_mix_schedule():
    np.testing.assert_allclose([float(mix_at(s, 4)) for s in range(6)], [0, 0.25, 0.5, 0.75, 1, 1])


@pytest.mark.parametrize("norm", ["per_linear", "subln"])
def test_mix_zero_is_the_fp_model_and_mix_one_the_bitnet_model(tiny_qwen3, tmp_path, norm):
    from flax import nnx

    from bitembed_jax.convert.fp_to_bitnet import fp_to_bitnet
    from bitembed_jax.io.load import load_model_dir

    fp, fcfg = load_model_dir(convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp"))
    student, _ = fp_to_bitnet(fp, fcfg, SimpleNamespace(mode="bitnet", norm=norm, act_bits=8))
    graphdef, state = nnx.split(student)
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(0, fcfg.vocab_size, size=(2, 12)))
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7]]), jnp.int32)

    def hidden(mix):
        model = nnx.merge(graphdef, state)
        if mix is not None:
            set_quant_mix(model, jnp.float32(mix))
        return np.asarray(model(ids, mask).last_hidden_state)

    np.testing.assert_allclose(hidden(0.0), np.asarray(fp(ids, mask).last_hidden_state), rtol=1e-5, atol=1e-5)
    plain = hidden(None)
    # mix 1 runs the fake-quantized float matmul instead of the exact integer-code one: float order only
    np.testing.assert_allclose(hidden(1.0), plain, rtol=1e-4, atol=1e-4)
    assert not np.allclose(hidden(0.5), plain, atol=1e-2)


def quick_cfg(model_dir, *overrides):
    cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"))
    base = ["--config.train.batch_size=16", "--config.train.num_steps=4", "--config.train.log_every=1",
            "--config.train.warmup_steps=1", "--config.mesh.data=8", f"--config.init.model={model_dir}",
            "--config.checkpoint.async_save=False"]
    return apply_overrides(cfg, base + list(overrides))


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_warmup_run_starts_at_the_fp_loss_and_ends_quantized(tiny_qwen3, tmp_path, capsys):
    """A bitnet student from an fp folder: step 1 (mix 0) has the fp run's loss, the mix rises 0, 1/2, then
    the plain BitNet step runs; remat on, since the mix must pass through nnx.remat. The log says when each
    of the two programs compiles (the progress bar waits for it)."""
    fp = convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp")
    train(quick_cfg(fp, "--config.init.mode=fp", "--config.train.num_steps=1"), str(tmp_path / "fp_run"))
    capsys.readouterr()
    out = train(quick_cfg(fp, "--config.train.quant_warmup_steps=2", "--config.train.remat=True"),
                str(tmp_path / "warm"))
    said = [line for line in capsys.readouterr().out.splitlines() if "compiling" in line]
    assert said == ["step 1: compiling the train step (gradual quantization: its warmup program)",
                    "step 3: compiling the train step"]
    warm, ref = rows(str(tmp_path / "warm")), rows(str(tmp_path / "fp_run"))
    np.testing.assert_allclose(warm[0]["loss"], ref[0]["loss"], rtol=1e-5)
    assert [r.get("quant_mix") for r in warm] == [0.0, 0.5, None, None]
    assert all(np.isfinite(r["loss"]) for r in warm)
    assert json.load(open(os.path.join(out, "bitembed_config.json")))["model"]["mode"] == "bitnet"


@pytest.mark.parametrize("override,match", [
    (["--config.train.quant_warmup_steps=4"], r"config.train.quant_warmup_steps=4 must be >= 0 and below "
                                              r"train.num_steps=4"),
    (["--config.train.quant_warmup_steps=-1"], r"config.train.quant_warmup_steps=-1 must be >= 0"),
    (["--config.train.quant_warmup_steps=2", "--config.init.mode=fp"],
     r"config.train.quant_warmup_steps=2 blends in the BitNet conversion; config.init.mode='fp' has none"),
])
def test_warmup_config_errors(tiny_qwen3, override, match):
    with pytest.raises(ValueError, match=match):
        validate_config(quick_cfg(tiny_qwen3, *override), 8)
