"""Stage 3+4: fine-tuning with teacher distillation and multi-precision output embeddings."""
import json
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.convert.hf_import import convert
from bitembed_jax.train.config_checks import validate_config
from bitembed_jax.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ft_cfg(init, teacher, *extra):
    cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart_finetune.py"))
    return apply_overrides(cfg, [
        f"--config.init.model={init}", f"--config.teacher.model={teacher}", "--config.train.batch_size=16",
        "--config.train.num_steps=3", "--config.train.log_every=1", "--config.train.warmup_steps=1",
        "--config.mesh.data=8", "--config.checkpoint.async_save=False", *extra])


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def student(tiny_qwen3, tmp_path_factory):
    return convert(tiny_qwen3, str(tmp_path_factory.mktemp("enc") / "bitnet"), mode="bitnet")


def test_finetune_with_distillation_and_precisions(student, tiny_qwen3, tmp_path):
    out = train(ft_cfg(student, tiny_qwen3), str(tmp_path))
    r = rows(str(tmp_path))
    assert len(r) == 3
    for key in ("sim_distill", "attn_distill", "contrastive", "loss_fp32", "loss_int8", "loss_int4",
                "loss_binary", "loss_fp32@32", "loss_binary@32"):
        assert all(np.isfinite(x[key]) for x in r), key
    # total = contrastive + alpha * sim + beta * attn
    x = r[0]
    np.testing.assert_allclose(x["loss"], x["contrastive"] + x["sim_distill"] + x["attn_distill"], rtol=1e-5)
    meta = json.load(open(os.path.join(out, "bitembed_config.json")))
    assert meta["precisions"] == ["binary", "fp32", "int4", "int8"] and meta["matryoshka_dims"] == [0, 32]


@pytest.mark.parametrize("mesh", [(2, 2, 2), (1, 1, 1)])
def test_finetune_sharded_equals_single_layout(tiny_qwen3, tmp_path, mesh):
    """fp student (no rounding discontinuities): every mesh layout gives the data=8 losses."""
    fp = convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp")
    common = ("--config.init.mode=fp", "--config.loss.precisions.int8=0", "--config.loss.precisions.int4=0",
              "--config.loss.precisions.binary=0")
    train(ft_cfg(fp, tiny_qwen3, *common), str(tmp_path / "d8"))
    d, f, t = mesh
    train(ft_cfg(fp, tiny_qwen3, *common, f"--config.mesh.data={d}", f"--config.mesh.fsdp={f}",
                 f"--config.mesh.tensor={t}"), str(tmp_path / "other"), devices=jax.devices()[: d * f * t])
    for key in ("loss", "sim_distill", "attn_distill"):
        np.testing.assert_allclose([x[key] for x in rows(str(tmp_path / "other"))],
                                   [x[key] for x in rows(str(tmp_path / "d8"))], rtol=1e-5, atol=1e-6)


ALIGN = ("--config.distill.embed_weight=2.0", "--config.distill.hidden_weight=0.5")


def test_student_equal_to_teacher_has_zero_distillation(tiny_qwen3, tmp_path):
    fp = convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp")
    train(ft_cfg(fp, tiny_qwen3, "--config.init.mode=fp", "--config.train.num_steps=1", *ALIGN), str(tmp_path / "w"))
    r = rows(str(tmp_path / "w"))[0]
    for key in ("sim_distill", "attn_distill", "embed_distill", "hidden_distill"):
        assert abs(r[key]) < 1e-5, key


def test_bitnet_student_from_fp_folder_with_alignment(tiny_qwen3, tmp_path):
    """A bitnet student started from one of our fp model folders (e.g. the trained teacher) equals the bitnet
    import of the same weights, and trains with the pooled and hidden-state alignment terms."""
    from bitembed_jax.convert.fp_to_bitnet import fp_to_bitnet
    from bitembed_jax.io.load import load_model_dir
    from bitembed_jax.io.state_paths import flat_params
    from flax import nnx

    fp = convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp")
    direct, dcfg = load_model_dir(convert(tiny_qwen3, str(tmp_path / "bitnet"), mode="bitnet"))
    init = SimpleNamespace(mode="bitnet", norm=dcfg.norm, act_bits=dcfg.act_bits)
    made, mcfg = fp_to_bitnet(*load_model_dir(fp), init)
    assert mcfg == dcfg
    want, got = flat_params(nnx.state(direct, nnx.Param)), flat_params(nnx.state(made, nnx.Param))
    assert sorted(want) == sorted(got)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)

    out = train(ft_cfg(fp, fp, *ALIGN, "--config.train.num_steps=4"), str(tmp_path / "w"))
    r = rows(str(tmp_path / "w"))
    x = r[0]
    # total = contrastive + sim + attn + 2.0 * embed + 0.5 * hidden
    np.testing.assert_allclose(x["loss"], x["contrastive"] + x["sim_distill"] + x["attn_distill"]
                               + 2.0 * x["embed_distill"] + 0.5 * x["hidden_distill"], rtol=1e-5)
    assert x["embed_distill"] > 1e-3 and x["hidden_distill"] > 1e-3  # ternary != fp teacher
    assert json.load(open(os.path.join(out, "bitembed_config.json")))["model"]["mode"] == "bitnet"


def test_finetune_config_errors(student, tiny_qwen3):
    with pytest.raises(ValueError, match="config.teacher.model is empty"):
        validate_config(ft_cfg(student, ""), 8)
    with pytest.raises(ValueError, match="config.teacher.model is empty"):
        validate_config(ft_cfg(student, "", "--config.distill.sim_weight=0", "--config.distill.attn_weight=0",
                               "--config.distill.hidden_weight=1"), 8)
    with pytest.raises(ValueError, match="config.distill.embed_weight=-1.0 must be >= 0"):
        validate_config(ft_cfg(student, tiny_qwen3, "--config.distill.embed_weight=-1.0"), 8)
    with pytest.raises(ValueError, match="num_chunks must be 1 when distilling"):
        validate_config(ft_cfg(student, tiny_qwen3, "--config.loss.num_chunks=2"), 8)
    with pytest.raises(ValueError, match="at least one precision"):
        validate_config(ft_cfg(student, tiny_qwen3, *[f"--config.loss.precisions.{p}=0" for p in
                                                      ("fp32", "int8", "int4", "int2", "binary")]), 8)


def test_alignment_needs_equal_widths_checked_before_the_data(student, tmp_path):
    from tests import hf_fixtures

    wide = hf_fixtures.make_tiny_hf("qwen3", str(tmp_path / "wide"), hidden_size=96)
    with pytest.raises(ValueError, match="config.distill.embed_weight: the teacher's hidden size 96 != the "
                                         "student's 64"):
        train(ft_cfg(student, wide, *ALIGN), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "dataset")  # refused from the configs, before the data
    assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


def test_teacher_with_another_tokenizer_of_the_same_size_is_refused_before_the_data(student, tmp_path):
    from bitembed_jax.testing import tiny_hf

    other = tiny_hf.make_tiny_hf("qwen3", str(tmp_path / "other"), vocab_size=512,
                                 texts=[f"other words {i} in another order zeta eta theta" for i in range(200)])
    with pytest.raises(ValueError, match="config.teacher.model=.*other.*: its tokenizer differs from the "
                                         "student's .*must share the tokenizer"):
        train(ft_cfg(student, other), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "dataset")
