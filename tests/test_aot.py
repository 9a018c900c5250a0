"""Ahead-of-time compilation of the real train step for a TPU topology, on this CPU-only machine (libtpu).

libtpu comes with the ``tpu`` extra, which CI installs: there (BITEMBED_REQUIRE_LIBTPU=1, set by .ci/run) its
absence fails these tests; elsewhere, a CPU install without it skips the tests that compile.
"""
import importlib.util
import json
import os

import pytest

from bitembed_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None and not os.environ.get("BITEMBED_REQUIRE_LIBTPU"),
    reason='libtpu is not installed (pip install -e ".[tpu]")')


@needs_libtpu
def test_aot_tiny_pretrain_and_finetune_on_v5e_2x2(tiny_qwen3, tmp_path, capsys):
    """Guards sharding regressions: the train step (and the fine-tuning step with its teacher) compile for 4 chips."""
    # the fine-tuning config names no teacher: aot compiles it with the student's architecture in fp
    for config, extra in (("quickstart.py", []), ("quickstart_finetune.py", [])):
        out = tmp_path / f"{config}.json"
        rc = main(["aot", "--config", os.path.join(ROOT, "configs", config), "--topology", "v5e:2x2",
                   "--step-time", "0.5", "--json", str(out), f"--config.init.model={tiny_qwen3}",
                   "--config.mesh.data=2", "--config.mesh.fsdp=2", *extra])
        assert rc == 0
        r = json.loads(out.read_text())
        assert r["chips"] == 4 and r["fits"] and r["flops_per_chip"] > 0 and 0 < r["mfu"] < 1
        if config == "quickstart.py":  # unchunked, no remat: the shape count is XLA's count less elementwise work
            assert 0.8 < r["model_flops_per_chip"] / r["flops_per_chip"] < 1.0
        assert 0 < r["total_gib"] < 16
        # the forward code matmuls run as int8 x int8 -> int32 on the TPU (bf16 on this CPU)
        assert r["code_matmul"] == "int8" and r["int32_matmuls"] > 0
        out_text = capsys.readouterr().out
        assert "fits" in out_text and "integer-code matmuls: int8 operands" in out_text


@needs_libtpu
def test_aot_reports_does_not_fit(tiny_qwen3, capsys):
    with pytest.raises(SystemExit, match="does not fit in the HBM of v5e:2x2|more than the 16 GiB of v5e:2x2"):
        main(["aot", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--topology", "v5e:2x2",
              f"--config.init.model={tiny_qwen3}", "--config.mesh.data=4", "--config.train.batch_size=4096",
              "--config.data.passage_max_len=4096"])
    assert "DOES NOT FIT" in capsys.readouterr().out


@needs_libtpu
def test_aot_names_the_topology_libtpu_refuses(capsys):
    """libtpu answers for a topology it cannot lay out: one line with its reason, and no hint to install it."""
    assert main(["aot", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--topology", "v5e:16x17"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: --topology v5e:16x17: INVALID_ARGUMENT: ")
    assert "not divisible" in err[0] and "pip install" not in err[0]


def test_aot_without_libtpu_says_in_one_line_how_to_install_it(monkeypatch, capsys):
    """A CPU install has no libtpu: one error line naming the extra to install, no traceback, nothing compiled."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(SystemExit) as stop:
        main(["aot", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--topology", "v5e:2x2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: --topology v5e:2x2: AOT compilation for TPUs needs libtpu, which this install lacks: '
                   'pip install -e ".[tpu]" in the checkout (or pip install "jax[tpu]")']


def test_aot_hints_at_libtpu_when_jax_cannot_load_it(monkeypatch):
    from jax.experimental import topologies

    from bitembed_jax.train.aot import LibtpuMissing, topology_devices

    def missing(**_):  # what jax raises when it finds no usable libtpu
        raise RuntimeError("JAX TPU support not installed; cannot generate TPU topology.")

    real = importlib.util.find_spec  # libtpu is "there" (even on a CPU install), and jax fails to load it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "libtpu" else real(name, *a))
    monkeypatch.setattr(topologies, "get_topology_desc", missing)
    with pytest.raises(LibtpuMissing, match=r'--topology v5e:2x2: JAX TPU support .*pip install -e "\.\[tpu\]"'):
        topology_devices("v5e:2x2")


@needs_libtpu
def test_aot_with_gradual_quantization_reports_the_larger_program(tiny_qwen3, monkeypatch):
    """The warmup program (float fake-quantized matmuls) is compiled too, and the report takes the larger."""
    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train import aot
    from bitembed_jax.train.aot import compile_programs, compile_step, lower_programs, topology_devices, total_bytes

    def cfg(*extra):
        return apply_overrides(load_config_file(os.path.join(ROOT, "configs", "quickstart.py")), [
            f"--config.init.model={tiny_qwen3}", "--config.mesh.data=4", "--config.train.batch_size=64", *extra])

    devices = topology_devices("v5e:2x2")
    assert len(lower_programs(cfg(), devices)[0]) == 1  # no warmup: one program (compiling it costs a minute)
    plain, warm = compile_programs(cfg("--config.train.quant_warmup_steps=5"), devices)[0]
    assert plain.as_text() != warm.as_text()
    sizes = [total_bytes(c.memory_analysis()) for c in (plain, warm)]
    # compile_step's choice among the programs just compiled, without compiling them a second time
    monkeypatch.setattr(aot, "compile_programs", lambda *a: ([plain, warm], None))
    reported, _ = compile_step(cfg("--config.train.quant_warmup_steps=5"), devices)
    assert total_bytes(reported.memory_analysis()) == max(sizes)


def _buffer_shapes(hlo_text: str):
    """(dtype, dims) of every instruction result in a compiled module's text."""
    import re

    for m in re.finditer(r"= (\w+)\[([\d,]+)\]", hlo_text):
        yield m.group(1), tuple(int(d) for d in m.group(2).split(","))


@needs_libtpu
def test_fsdp_step_keeps_activations_and_embedding_grad_sharded(tiny_qwen3):
    """With fsdp=4 every chip holds a quarter of the batch's activations and a quarter of the embedding
    table's gradient. Without the model's activation constraints XLA followed the weights' fsdp sharding
    instead: per-layer activations replicated 4x and a full-size table gradient on every chip, which made
    Qwen3-0.6B at 65,536 pairs miss v5e's 16 GiB (15.9 GiB; 4.8 GiB with the constraints)."""
    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train.aot import compile_step, topology_devices

    cfg = apply_overrides(load_config_file(os.path.join(ROOT, "configs", "quickstart.py")), [
        f"--config.init.model={tiny_qwen3}", "--config.mesh.data=1", "--config.mesh.fsdp=4",
        "--config.train.batch_size=32", "--config.loss.num_chunks=2"])
    compiled, mcfg = compile_step(cfg, topology_devices("v5e:2x2"))
    shapes = set(_buffer_shapes(compiled.as_text()))
    vocab, hidden, inter = mcfg.vocab_size, mcfg.hidden_size, mcfg.intermediate_size
    assert ("f32", (vocab, hidden // 4)) in shapes  # the sharded table (and its gradient) are there
    assert ("f32", (vocab, hidden)) not in shapes, "a full-size embedding gradient on one chip"
    lengths = {int(cfg.data.query_max_len), int(cfg.data.passage_max_len)}
    per_chip = 32 // 2 // 4  # batch / chunks / fsdp
    mlp = [d for _, d in shapes if len(d) == 3 and d[1] in lengths and d[2] == inter]
    assert mlp and all(d[0] <= per_chip for d in mlp), sorted(mlp)


@needs_libtpu
def test_aot_v4_megacore_one_device_per_chip(tiny_qwen3, tmp_path):
    """v4 (and v5p) chips hold two TensorCores that jax drives as one "megacore" device: 4 chips, 4 devices."""
    out = tmp_path / "v4.json"
    rc = main(["aot", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--topology", "v4:2x2x1",
               "--json", str(out), f"--config.init.model={tiny_qwen3}", "--config.mesh.data=2",
               "--config.mesh.fsdp=2"])
    r = json.loads(out.read_text())
    assert rc == 0 and r["chips"] == 4 and r["hbm_gib"] == 32 and r["fits"]


def test_cpu_install_leaves_libtpu_to_the_tpu_extra_which_ci_installs():
    """requirements.txt is the CPU install (libtpu prints TPU-discovery errors on every start of jax on a
    machine without TPUs); libtpu comes with the `tpu` extra, which CI installs and requires for this file."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = [line.split("#")[0].strip().lower() for line in f]
    assert not [p for p in pins if "tpu" in p], pins
    with open(os.path.join(ROOT, "setup.cfg")) as f:
        assert "tpu =\n    jax[tpu]" in f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert 'pip install -q -r requirements.txt -e ".[tpu]"' in ci and "export BITEMBED_REQUIRE_LIBTPU=1" in ci
