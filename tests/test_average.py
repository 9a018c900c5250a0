"""bitembed-jax average: the written model's params are the numpy (weighted) mean of the inputs'; bad input stops
before anything is written."""
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from bitembed_jax.cli import main
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.io.model_dir import read_config, save_model_dir
from bitembed_jax.io.state_paths import flat_params


def _params(folder):
    model, _ = load_model_dir(folder)
    return {k: np.asarray(v) for k, v in flat_params(nnx.state(model)).items()}


def _with_meta(src, dst, **changes):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "bitembed_config.json")
    with open(path) as f:
        meta = json.load(f)
    meta.update(changes)
    with open(path, "w") as f:
        json.dump(meta, f)
    return str(dst)


@pytest.fixture(scope="module")
def models(tiny_qwen3, tmp_path_factory):
    """Two BitNet models from one start, as two fine-tunes would be, plus an fp one."""
    from bitembed_jax.convert.hf_import import convert

    root = tmp_path_factory.mktemp("average")
    a = _with_meta(convert(tiny_qwen3, str(root / "a0"), mode="bitnet"), root / "a", prompts={"query": "Query: "})
    model, cfg = load_model_dir(a)
    state = nnx.state(model, nnx.Param)
    noise = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), state)
    nnx.update(model, noise)
    _, meta = read_config(a)
    b = save_model_dir(str(root / "b"), model, cfg, tokenizer_dir=a,
                       extra={k: v for k, v in meta.items() if k != "model"})
    return a, b, convert(tiny_qwen3, str(root / "fp"), mode="fp")


@pytest.mark.parametrize("weights", [None, "1,3"])
def test_average_is_the_numpy_weighted_mean(models, tmp_path, capsys, weights):
    a, b, _ = models
    out = tmp_path / "soup"
    argv = ["average", "--model", a, "--model", b, "--out", str(out)] + (["--weights", weights] if weights else [])
    assert main(argv) == 0
    assert "average of 2 models" in capsys.readouterr().out
    wa, wb = (0.5, 0.5) if weights is None else (0.25, 0.75)
    pa, pb, got = _params(a), _params(b), _params(str(out))
    assert set(got) == set(pa) and any(not np.array_equal(pa[k], pb[k]) for k in pa)
    for k in pa:
        np.testing.assert_allclose(got[k], (wa * pa[k].astype(np.float64) + wb * pb[k]).astype(pa[k].dtype),
                                   rtol=1e-6, atol=1e-7, err_msg=k)
    meta = read_config(str(out))[1]
    assert [m["weight"] for m in meta["averaged_from"]] == [wa, wb]
    assert meta["prompts"] == {"query": "Query: "} and os.path.exists(out / "tokenizer_config.json")


def test_a_model_averaged_with_itself_is_unchanged(models, tmp_path):
    a, _, _ = models
    assert main(["average", "--model", a, "--model", a, "--out", str(tmp_path / "same")]) == 0
    pa, got = _params(a), _params(str(tmp_path / "same"))
    assert all(np.array_equal(pa[k], got[k]) for k in pa)


@pytest.mark.parametrize("case, named", [
    ("fp", r"model config differs from .*\['mode'"),
    ("prompts", r"key 'prompts'"),
    ("export", "is an export folder"),
    ("one", "at least two model folders"),
    ("weights", r"--weights: need 2 non-negative"),
    ("exists", "exists and is not empty; pass --overwrite"),
])
def test_bad_input_is_refused_before_writing(models, tmp_path, capsys, case, named):
    a, b, fp = models
    out = tmp_path / "soup"
    other = {"fp": fp, "prompts": _with_meta(b, tmp_path / "p", prompts={"query": "Q: "}),
             "export": _with_meta(b, tmp_path / "e", export={"format": "bitnet-2bit"})}.get(case, b)
    argv = ["average", "--model", a] + ([] if case == "one" else ["--model", other]) + ["--out", str(out)]
    if case == "weights":
        argv += ["--weights", "1,-1"]
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert main(argv) == 2
    assert re.search(named, capsys.readouterr().err)
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()


@pytest.mark.parametrize("case, named", [
    ("first", "--out {a} is the input --model {a}; average into another folder"),
    ("second", "--out {b} is the input --model {b}; average into another folder"),
    ("link", "--out {tmp}/link is the input --model {a}; average into another folder"),
    ("inside", "--out {a}/soup overlaps the input --model {a}; average into another folder"),
    ("holds", "--out {tmp} overlaps the input --model {tmp}/w; average into another folder"),
    ("workdir", "--out {tmp}/w/model is the input --model {tmp}/w; average into another folder"),
])
def test_out_that_is_an_input_is_refused_before_anything_is_read(models, tmp_path, capsys, monkeypatch, case,
                                                                 named):
    """With --overwrite, an --out that is (or holds, or lies in) an input would replace it after the average."""
    from bitembed_jax.convert import average

    a, b, _ = models
    work = tmp_path / "w"
    shutil.copytree(b, work / "model")  # a training workdir: its model is w/model
    (tmp_path / "link").symlink_to(a)
    out = {"first": a, "second": b, "link": str(tmp_path / "link"), "inside": os.path.join(a, "soup"),
           "holds": str(tmp_path), "workdir": str(work / "model")}[case]
    second = str(work) if case in ("holds", "workdir") else b
    before = {p: os.path.getmtime(p) for p in (a, b, work / "model")}
    monkeypatch.setattr(average, "read_config", lambda *_: pytest.fail("an input was read"))
    assert main(["average", "--model", a, "--model", second, "--out", out, "--overwrite"]) == 2
    assert capsys.readouterr().err == f"error: {named.format(a=a, b=b, tmp=tmp_path)}\n"
    assert before == {p: os.path.getmtime(p) for p in before} and not os.path.exists(os.path.join(a, "soup"))
    assert os.path.exists(os.path.join(a, "params")) and os.path.exists(os.path.join(b, "params"))


def test_models_from_different_starts_are_refused_unless_forced(models, tmp_path, capsys):
    """Issue 36 row 9: a soup of models trained from different starts is refused (a warning with --force); a
    fine-tune averaged with its own start (WiSE-FT) shares that start."""
    a, b, _ = models
    other = _with_meta(b, tmp_path / "other", source={"hf_path": "/elsewhere/Qwen3-0.6B"})
    argv = ["average", "--model", a, "--model", other, "--out", str(tmp_path / "soup")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the models were trained from different starts") and err.count("\n") == 1
    assert "/elsewhere/Qwen3-0.6B" in err and "pass --force" in err and not (tmp_path / "soup").exists()
    assert main(argv + ["--force"]) == 0
    assert "warning: averaging models trained from different starts" in capsys.readouterr().err
    assert "started_from" not in read_config(str(tmp_path / "soup"))[1]
    tuned = _with_meta(b, tmp_path / "tuned", started_from=a)  # what a training run records
    assert main(["average", "--model", a, "--model", tuned, "--out", str(tmp_path / "wise")]) == 0
    assert read_config(str(tmp_path / "wise"))[1]["started_from"] == read_config(a)[1]["source"]["hf_path"]
