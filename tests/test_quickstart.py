"""The README's one-command quickstart, run the way the README prints it."""
import os
import shlex
import subprocess
import sys

import pytest

from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.io.model_dir import read_config
from bitembed_jax.train.build import student_config
from bitembed_jax.train.config_checks import validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = "bitembed-jax train --config configs/quickstart.py --workdir "


def readme_one_liner() -> list[str]:
    """The README's training command on the quickstart config that names no model (there is exactly one)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        found = [shlex.split(line, comments=True) for line in f if line.startswith(QUICKSTART)]
    one = [argv for argv in found if len(argv) == 6]
    assert len(one) == 1, f"README.md: expected one line `{QUICKSTART}DIR`, found {found}"
    return one[0]


def test_the_readme_one_command_quickstart_trains_a_model(tmp_path):
    """The README's command verbatim, through the installed `bitembed-jax` script, on a fresh work dir, with
    two changes: the work dir is a temporary folder, and `--config.train.num_steps=2` is appended (the README's
    60 steps take about 2.5 min on 2 cores; the steps run the same code)."""
    argv = readme_one_liner()
    script = os.path.join(os.path.dirname(sys.executable), "bitembed-jax")
    assert os.path.exists(script), f"{script}: the README's install (pip install -e .) puts the script there"
    wd = str(tmp_path / "run")
    r = subprocess.run([script, *argv[1:5], wd, "--config.train.num_steps=2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"config.init.model=tiny:qwen3: made a tiny random qwen3 backbone in {wd}/tiny-qwen3" in r.stdout
    assert f"trained model folder: {wd}/model" in r.stdout
    mcfg, _ = read_config(os.path.join(wd, "model"))
    cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"))
    assert mcfg.mode == "bitnet"
    # aot compiles the quickstart for the same student without making the backbone
    assert student_config(cfg).replace(dtype=mcfg.dtype, remat=mcfg.remat) == mcfg


def test_an_unknown_tiny_backbone_is_refused_with_the_choices():
    cfg = apply_overrides(load_config_file(os.path.join(ROOT, "configs", "quickstart.py")),
                          ["--config.init.model=tiny:llama"])
    with pytest.raises(ValueError, match="config.init.model='tiny:llama': the tiny backbones are tiny:qwen3, "
                                         "tiny:gemma3"):
        validate_config(cfg, 8)
