"""What an operator gets wrong, as they type it: every refused command exits 2 with one ``error:`` line, before any
work, and nothing they gave us is changed or deleted (issue 36). Most command lines run in one batch process
(``cli_batch``: one jax import for all); joining an absent coordinator runs on its own (it stops its process)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from bitembed_jax.cli import build_parser
from tests.cli_batch import ROOT, one_line_error, run_batch

QUICK = os.path.join(ROOT, "configs", "quickstart.py")


def _snapshot(root) -> dict:
    """{relative path: sha256} of every file under ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _export_folder(path, fmt, with_hf_config=False):
    """The marker files of one of our export folders (what the commands look at before reading weights)."""
    os.makedirs(path)
    with open(os.path.join(path, "bitembed_config.json"), "w") as f:
        json.dump({"model": {}, "export": {"format": fmt, "version": 1}}, f)
    if with_hf_config:  # bitnet-2bit exports are HF folders too
        shutil.copy(os.path.join(path, "..", "hf", "config.json"), os.path.join(path, "config.json"))
    return str(path)


@pytest.fixture(scope="module")
def world(tiny_qwen3, tmp_path_factory):
    """A user's files: an HF folder (also inside a parent holding an unrelated file), a model folder, texts, a
    non-UTF-8 STS file, a broken config, a plain file, export folders."""
    from bitembed_jax.convert.hf_import import convert

    root = tmp_path_factory.mktemp("world")
    shutil.copytree(tiny_qwen3, root / "hf")
    shutil.copytree(tiny_qwen3, root / "par" / "tiny")
    (root / "par" / "notes.txt").write_text("mine\n")
    (root / "par" / "m.gguf").write_bytes(b"GGUF")
    convert(tiny_qwen3, str(root / "M"), mode="fp")
    (root / "texts.txt").write_text("alpha beta\ngamma delta\n")
    (root / "M" / "texts.txt").write_text("alpha beta\ngamma delta\n")
    (root / "latin1.tsv").write_bytes("score\ts1\ts2\n1.0\tt\xe9l\xe9\tb\n0.5\tc\td\n".encode("latin-1"))
    (root / "broken.py").write_text("def get_config(:\n    pass\n")
    (root / "afile").write_text("not a folder\n")
    shutil.copy(os.path.join(ROOT, "bitembed_jax", "data", "sample", "pairs.jsonl"), root / "M" / "pairs.jsonl")
    _export_folder(root / "onnx", "onnx")
    _export_folder(root / "b2", "bitnet-2bit", with_hf_config=True)
    return root


def _in(world, *parts):
    return os.path.join(str(world), *parts)


def overlap_cases(w) -> dict:
    """Per subcommand that writes: command lines whose output is, holds or lies in one of their inputs."""
    m, hf = _in(w, "M"), _in(w, "hf")
    return {
        "convert": [["convert", "--hf", hf, "--out", hf, "--bitnet", "--overwrite"],
                    ["convert", "--hf", _in(w, "par", "tiny"), "--out", _in(w, "par"), "--overwrite"],
                    ["convert", "--gguf", _in(w, "par", "m.gguf"), "--out", _in(w, "par"), "--overwrite"]],
        "export": [["export", "--checkpoint", m, "--out", _in(w, "M", "inside"), "--format", "base3"],
                   ["export", "--checkpoint", _in(w, "M", "params"), "--out", m, "--overwrite"]],
        "average": [["average", "--model", m, "--model", m, "--out", _in(w, "M", "soup")]],
        # row 2: a run written into its own init model (encode of it would then read the untrained init)
        "train": [["train", "--config", QUICK, "--workdir", m, "--init-from", m],
                  ["train", "--config", QUICK, "--workdir", _in(w, "M", "run"), "--init-from", m],
                  ["train", "--config", QUICK, "--workdir", m,
                   f"--config.data.train_files=['{_in(w, 'M', 'pairs.jsonl')}']"],
                  ["train", "--config", QUICK, "--workdir", _in(w, "run"), "--init-from", m,
                   "--teacher", _in(w, "run")]],
        "encode": [["encode", "--model", m, "--input", _in(w, "texts.txt"), "--out", _in(w, "M", "v.npy")],
                   ["encode", "--model", m, "--input", _in(w, "texts.txt"), "--out", _in(w, "texts.txt"),
                    "--overwrite"]],
        "eval": [["eval", "--model", m, "--sts", _in(w, "latin1.tsv"), "--output", _in(w, "M", "results")],
                 ["eval", "--model", m, "--sts", _in(w, "latin1.tsv"), "--output", str(w), "--overwrite"]],
        "calibrate": [["calibrate", "--model", m, "--input", _in(w, "M", "texts.txt")]],
        "aot": [["aot", "--config", QUICK, "--topology", "v5e:2x2", "--json", QUICK]],
        "index": [["index", "build", "--model", m, "--input", _in(w, "texts.txt"), "--out", _in(w, "M", "idx")],
                  ["index", "bench", "--model", m, "--synthetic", "100", "--stats-from", _in(w, "M", "v.npy"),
                   "--output", m, "--overwrite"]],
        "data": [["data", "build", _in(w, "M", "pairs.jsonl"), "--out", m, "--overwrite"],
                 ["data", "build", _in(w, "M"), "--out", _in(w, "M", "ds"), "--overwrite"]],
    }


def test_no_command_writes_over_or_into_its_inputs(world, tmp_path):
    """Row 1 (and 2) for every subcommand that writes: an output that is, holds or lies inside an input is refused
    in one line before anything is read, and every file the user had is still there, unchanged."""
    cases = overlap_cases(world)
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    # make-tiny reads nothing; local-pod runs one of the others, whose own check applies
    assert set(cases) == subcommands - {"make-tiny", "local-pod"}, "a new subcommand needs its overlap cases here"
    before = _snapshot(world)
    argvs = [argv for group in cases.values() for argv in group]
    for r in run_batch(argvs, tmp_path):
        err = one_line_error(r)
        assert " overlaps the input " in err or " is the input " in err, r
    assert _snapshot(world) == before


def test_bad_input_is_one_line_naming_what_is_wrong(world, tmp_path):
    """Rows 5, 6, 8, 10, 11 and --version: each refused command says in one line which flag, file or folder kind."""
    m, onnx = _in(world, "M"), _in(world, "onnx")
    cases = [
        # row 6: train's work dir and config
        (["train", "--config", QUICK, "--workdir", _in(world, "afile")], "afile is a file, not a folder"),
        (["train", "--config", _in(world, "texts.txt"), "--workdir", str(tmp_path / "w")],
         "texts.txt: not a config file; give a Python file with a get_config() function"),
        (["train", "--config", _in(world, "broken.py"), "--workdir", str(tmp_path / "w")],
         "broken.py:1: syntax error"),
        (["train", "--config", QUICK, "--workdir", str(tmp_path / "w"),
          f"--config.data.dataset_dir={_in(world, 'afile')}"], "config.data.dataset_dir: "),
        # row 8: flags that do not apply
        (["convert", "--hf", _in(world, "hf"), "--out", str(tmp_path / "fp"), "--act-bits", "4"],
         "--act-bits 4: applies to bitnet models only"),
        (["convert", "--hf", _in(world, "hf"), "--out", str(tmp_path / "fp"), "--norm", "subln"],
         "--norm subln: applies to bitnet models only"),
        (["export", "--checkpoint", m, "--out", str(tmp_path / "x"), "--format", "base3", "--linear-class",
          "autobitlinear"], "--linear-class autobitlinear: applies to --format bitnet-2bit only"),
        (["export", "--checkpoint", m, "--out", str(tmp_path / "x"), "--private"],
         "--private: applies with --push-to-hub"),
        # row 10: the file, flag or folder kind named
        (["eval", "--model", m, "--sts", _in(world, "latin1.tsv"), "--output", str(tmp_path / "r")],
         "latin1.tsv:2: not UTF-8 text"),
        (["encode", "--model", m, "--input", _in(world, "texts.txt"), "--out", str(tmp_path / "v.npz"),
          "--precision", "int8", "--calibration-from", str(tmp_path / "nope.npz")],
         "--calibration-from " + str(tmp_path / "nope.npz") + " not found"),
        (["encode", "--model", m, "--input", _in(world, "texts.txt"), "--out", str(tmp_path / "v.npz"),
          "--precision", "int8", "--calibration-from", _in(world, "texts.txt")],
         "--calibration-from " + _in(world, "texts.txt") + ": not an .npz archive written by encode"),
        (["convert", "--hf", _in(world, "b2"), "--out", str(tmp_path / "c")],
         "b2 is a bitembed-jax bitnet-2bit export folder"),
        (["convert", "--hf", onnx, "--out", str(tmp_path / "c")], "onnx is a bitembed-jax onnx export folder"),
        (["encode", "--model", m, "--input", "x", "--out", "y.npy", "--coordinator", "127.0.0.1:99999",
          "--num-processes", "2", "--process-id", "1"], "port 99999 is out of range (1..65535)"),
        # row 5: local-pod's own joining settings are not overridden
        (["local-pod", "--", "encode", "--model", m, "--input", "x", "--out", "y.json", "--coordinator",
          "127.0.0.1:45678", "--num-processes", "3"], "local-pod: --coordinator 127.0.0.1:45678: local-pod sets"),
        (["local-pod", "--processes", "2", "--", "encode", "--model", m, "--input", "x", "--out", "y.json",
          "--num-processes=3"], "local-pod: --num-processes 3: local-pod sets"),
        (["local-pod", "--", "encode", "--model", m, "--input", "x", "--out", "y.json", "--process-id", "1"],
         "local-pod: --process-id 1"),
        ({"argv": ["local-pod", "--", "encode", "--model", m, "--input", "x", "--out", "y.json"],
          "env": {"JAX_NUM_PROCESSES": "3"}}, "local-pod: $JAX_NUM_PROCESSES 3: local-pod sets"),
    ]
    # row 11: an ONNX export where a model folder is read points to what serves it
    for argv in (["encode", "--model", onnx, "--input", _in(world, "texts.txt"), "--out", str(tmp_path / "o.npy")],
                 ["eval", "--model", onnx, "--sts", _in(world, "latin1.tsv"), "--output", str(tmp_path / "r")],
                 ["export", "--checkpoint", onnx, "--out", str(tmp_path / "e"), "--format", "base3"],
                 ["calibrate", "--model", onnx, "--input", _in(world, "texts.txt")],
                 ["train", "--config", QUICK, "--workdir", str(tmp_path / "t"), "--init-from", onnx]):
        cases.append((argv, "onnx is an ONNX export folder (for serving, not a bitembed-jax model folder): encode "
                            "with bitembed_jax.export.onnx_runtime.OnnxEncoder.from_pretrained(path) or FastEmbed "
                            "(bitembed_jax.export.fastembed_loader.fastembed_model(path))"))
    before = _snapshot(world)
    results = run_batch([argv for argv, _ in cases] + [["--version"]], tmp_path)
    for (_, want), r in zip(cases, results):
        assert want in one_line_error(r), (want, r)
    assert results[-1]["rc"] == 0 and results[-1]["out"].startswith("bitembed-jax 0.")
    assert _snapshot(world) == before
    assert not [p for p in os.listdir(tmp_path) if p not in ("cli_cases.json", "cli_results.json")]


def test_every_subcommand_help_has_a_description_an_example_and_its_defaults():
    """Row 12."""
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        text = " ".join(sub.format_help().split())  # unwrapped
        assert sub.description and f"example: bitembed-jax {name} " in text, name
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "") and action.dest != "help":
                assert f"default: {action.default}" in text, (name, action.dest)
    for name in ("train", "aot"):
        assert "--config.KEY=VALUE" in parser._subparsers._group_actions[0].choices[name].format_help()


def test_joining_an_absent_coordinator_stops_in_bounded_time_with_one_line(world, tmp_path):
    """Row 4: nobody at the coordinator: one line naming it after --join-timeout (not 5 minutes of silence and a
    C++ fatal error)."""
    from bitembed_jax.parallel.local_pod import free_port

    addr = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bitembed_jax.cli", "encode", "--model", _in(world, "M"),
                        "--input", _in(world, "texts.txt"), "--out", str(tmp_path / "v.npy"), "--coordinator",
                        addr, "--num-processes", "2", "--process-id", "1"],
                       env={**os.environ, "PYTHONPATH": ROOT, "BITEMBED_JOIN_TIMEOUT": "3"}, capture_output=True,
                       text=True, timeout=120)
    assert time.monotonic() - start < 60
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr == (f"error: process 1 of 2 could not join the job at {addr} within 3 s (no answer from the "
                        f"coordinator {addr}); check that process 0 runs and that its address and port are reachable "
                        f"from here, or raise --join-timeout ($BITEMBED_JOIN_TIMEOUT)\n"), r.stderr
    assert not (tmp_path / "v.npy").exists()


def test_check_apart_compares_what_is_read(tmp_path):
    """The shared check: a training workdir stands for its model/ (results beside it are fine, the workdir
    itself is not); links are resolved; gs:// paths compare by whole path components."""
    from bitembed_jax.io.paths import check_apart

    work = str(tmp_path / "run")
    model = os.path.join(work, "model")
    check_apart("--output", os.path.join(work, "eval"), [("--model", work, model)])
    for out in (work, model, os.path.join(model, "x"), str(tmp_path)):
        with pytest.raises(ValueError, match=r"--output .* (is|overlaps) the input --model .*/run;"):
            check_apart("--output", out, [("--model", work, model)])
    os.makedirs(model)
    os.symlink(model, tmp_path / "link")
    with pytest.raises(ValueError, match="is the input --model"):
        check_apart("--out", str(tmp_path / "link"), [("--model", work, model)])
    check_apart("--out", "gs://b/run2", [("--init-from", "gs://b/run")])
    check_apart("--out", "gs://b/run/x", [("--teacher", None)])
    with pytest.raises(ValueError, match="overlaps the input --init-from gs://b/run/"):
        check_apart("--out", "gs://b/run/x", [("--init-from", "gs://b/run/")])
