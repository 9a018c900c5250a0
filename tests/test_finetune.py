"""Stage 3+4: fine-tuning with teacher distillation and multi-precision output embeddings."""
import json
import os

import jax
import numpy as np
import pytest

from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.convert.hf_import import convert
from bitembed_jax.train.loop import train, validate_config

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


def test_student_equal_to_teacher_has_zero_distillation(tiny_qwen3, tmp_path):
    fp = convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp")
    train(ft_cfg(fp, tiny_qwen3, "--config.init.mode=fp", "--config.train.num_steps=1"), str(tmp_path / "w"))
    r = rows(str(tmp_path / "w"))[0]
    assert abs(r["sim_distill"]) < 1e-5 and abs(r["attn_distill"]) < 1e-5


def test_finetune_config_errors(student, tiny_qwen3):
    with pytest.raises(ValueError, match="config.teacher.model is empty"):
        validate_config(ft_cfg(student, ""), 8)
    with pytest.raises(ValueError, match="num_chunks must be 1 when distilling"):
        validate_config(ft_cfg(student, tiny_qwen3, "--config.loss.num_chunks=2"), 8)
    with pytest.raises(ValueError, match="at least one precision"):
        validate_config(ft_cfg(student, tiny_qwen3, *[f"--config.loss.precisions.{p}=0" for p in
                                                      ("fp32", "int8", "int4", "int2", "binary")]), 8)
