"""Ahead-of-time compilation of the real train step for a TPU topology, on this CPU-only machine (libtpu)."""
import json
import os

import pytest

from bitembed_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_aot_tiny_pretrain_and_finetune_on_v5e_2x2(tiny_qwen3, tmp_path, capsys):
    """Guards sharding regressions: the train step (and the fine-tuning step with its teacher) compile for 4 chips."""
    for config, extra in (("quickstart.py", []), ("quickstart_finetune.py", [f"--config.teacher.model={tiny_qwen3}"])):
        out = tmp_path / f"{config}.json"
        rc = main(["aot", "--config", os.path.join(ROOT, "configs", config), "--topology", "v5e:2x2",
                   "--step-time", "0.5", "--json", str(out), f"--config.init.model={tiny_qwen3}",
                   "--config.mesh.data=2", "--config.mesh.fsdp=2", *extra])
        assert rc == 0
        r = json.loads(out.read_text())
        assert r["chips"] == 4 and r["fits"] and r["flops_per_chip"] > 0 and 0 < r["mfu"] < 1
        assert 0 < r["total_gib"] < 16
        assert "fits" in capsys.readouterr().out


def test_aot_reports_does_not_fit(tiny_qwen3, capsys):
    with pytest.raises(SystemExit, match="does not fit in the HBM of v5e:2x2|more than the 16 GiB of v5e:2x2"):
        main(["aot", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--topology", "v5e:2x2",
              f"--config.init.model={tiny_qwen3}", "--config.mesh.data=4", "--config.train.batch_size=4096",
              "--config.data.passage_max_len=4096"])
    assert "DOES NOT FIT" in capsys.readouterr().out
