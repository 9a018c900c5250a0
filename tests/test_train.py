"""Training on an 8-device CPU mesh: loss goes down, meshes agree, config errors are caught early."""
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.convert.hf_import import convert
from bitembed_jax.train.config_checks import validate_config
from bitembed_jax.train.loop import NonFiniteLoss, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bitnet_dir(tiny_qwen3, tmp_path_factory):
    return convert(tiny_qwen3, str(tmp_path_factory.mktemp("enc") / "bitnet"), mode="bitnet")


def quick_cfg(model_dir, *overrides):
    cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"))
    base = ["--config.train.batch_size=16", "--config.train.num_steps=6", "--config.train.log_every=1",
            "--config.train.warmup_steps=1", "--config.train.learning_rate=5e-4", "--config.checkpoint.every_steps=3",
            "--config.mesh.data=8",
            f"--config.init.model={model_dir}", "--config.checkpoint.async_save=False"]
    return apply_overrides(cfg, base + list(overrides))


def losses(workdir):
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["step"]] = r["loss"]
    return [rows[k] for k in sorted(rows)]


@pytest.fixture(scope="module")
def data8_run(bitnet_dir, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("run_data8"))
    out = train(quick_cfg(bitnet_dir), wd)
    return wd, out


def test_loss_decreases_and_model_saved(data8_run):
    wd, out = data8_run
    ls = losses(wd)
    assert len(ls) == 6 and all(np.isfinite(ls))
    assert np.mean(ls[-2:]) < ls[0]
    assert os.path.exists(os.path.join(out, "bitembed_config.json"))
    assert os.path.isdir(os.path.join(wd, "tensorboard"))
    row = json.loads(open(os.path.join(wd, "metrics.jsonl")).readline())
    assert {"loss", "accuracy", "learning_rate", "grad_norm", "pairs_per_s", "tokens_per_s"} <= set(row)
    assert 0 < row["tokens_per_s"] < row["padded_tokens_per_s"]  # real tokens: the sample pairs are padded


@pytest.fixture(scope="module")
def fp_dir(tiny_qwen3, tmp_path_factory):
    return convert(tiny_qwen3, str(tmp_path_factory.mktemp("enc") / "fp"), mode="fp")


def _run_on_mesh(model_dir, workdir, mesh, *extra):
    data, fsdp, tensor = mesh
    cfg = quick_cfg(model_dir, f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}",
                    f"--config.mesh.tensor={tensor}", "--config.train.num_steps=4", *extra)
    train(cfg, workdir, devices=jax.devices()[: data * fsdp * tensor])
    return losses(workdir)


@pytest.mark.parametrize("mesh", [(2, 2, 2), (1, 1, 1)])
def test_meshes_agree_fp(fp_dir, tmp_path, mesh):
    """Full precision: data=2,fsdp=2,tensor=2 and one device give the data=8 losses to float tolerance."""
    ref = _run_on_mesh(fp_dir, str(tmp_path / "d8"), (8, 1, 1), "--config.init.mode=fp")
    got = _run_on_mesh(fp_dir, str(tmp_path / "other"), mesh, "--config.init.mode=fp")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mesh", [(2, 2, 2), (1, 1, 1)])
def test_meshes_agree_bitnet(data8_run, bitnet_dir, tmp_path, mesh):
    """BitNet: a different summation order can flip an int8/ternary rounding, so agreement is to ~1e-3.

    Rounding flips compound step by step (the fp test above shows the sharding itself is exact), so the
    first three steps are compared.
    """
    got = _run_on_mesh(bitnet_dir, str(tmp_path), mesh, "--config.train.num_steps=3")
    np.testing.assert_allclose(got, losses(data8_run[0])[:3], rtol=5e-3)


def test_chunked_matches_unchunked(data8_run, bitnet_dir, tmp_path):
    cfg = quick_cfg(bitnet_dir, "--config.loss.num_chunks=2", "--config.train.num_steps=3")
    train(cfg, str(tmp_path))
    np.testing.assert_allclose(losses(str(tmp_path)), losses(data8_run[0])[:3], rtol=5e-3)


def test_resume_refuses_different_config(data8_run, bitnet_dir):
    wd, _ = data8_run
    with pytest.raises(ValueError, match=r"loss.temperature: saved 0.05 != now 0.1"):
        train(quick_cfg(bitnet_dir, "--config.loss.temperature=0.1"), wd)


def test_config_saved_before_an_added_key_resumes_at_its_old_behaviour(bitnet_dir, tmp_path):
    """A work dir from before train.quant_warmup_steps existed: the key's old behaviour (0) resumes, any
    other value is a different run."""
    from bitembed_jax.train.checkpoint import CONFIG_FILE, check_or_write_config

    cfg = quick_cfg(bitnet_dir)
    check_or_write_config(str(tmp_path), cfg)
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)  # a run with a checkpoint: something to resume
    path = tmp_path / CONFIG_FILE
    saved = json.loads(path.read_text())
    del saved["train"]["quant_warmup_steps"]
    path.write_text(json.dumps(saved))
    check_or_write_config(str(tmp_path), quick_cfg(bitnet_dir))
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"train.quant_warmup_steps: saved 0 != now 2"):
        check_or_write_config(str(tmp_path), quick_cfg(bitnet_dir, "--config.train.quant_warmup_steps=2"))


def test_nonfinite_loss_stops_and_keeps_checkpoint(bitnet_dir, tmp_path):
    cfg = quick_cfg(bitnet_dir, "--config.train.learning_rate=1e30", "--config.checkpoint.every_steps=1",
                    "--config.train.grad_clip=0.0")
    named = r"diverged at step (\d+).*was not saved. The last checkpoint, step (\d+)"
    with pytest.raises(NonFiniteLoss, match=named):
        train(cfg, str(tmp_path))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps, "the good checkpoints before the bad step must survive"


def _saved_params_finite(workdir, step):
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree["params"]))


def test_a_diverged_step_is_never_checkpointed_and_the_operator_resumes_with_a_lower_rate(bitnet_dir, tmp_path,
                                                                                          capsys):
    """The issue's run: at lr 1e6 the gradients are NaN while the loss (computed before the update) is still
    finite; no saved checkpoint may hold NaN, and the named one is a real starting point."""
    from bitembed_jax.cli import main

    wd = str(tmp_path / "run")
    base = ["train", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", wd,
            "--init-from", bitnet_dir, "--config.train.batch_size=16", "--config.train.num_steps=8",
            "--config.train.log_every=1", "--config.mesh.data=8", "--config.checkpoint.async_save=False",
            "--config.checkpoint.every_steps=1", "--config.train.warmup_steps=1"]
    assert main(base + ["--config.train.learning_rate=1e6"]) == 2
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # after the progress bar: one line
    assert err.startswith("error: training diverged at step") and "Traceback" not in stderr
    nan_step = int(re.search(r"diverged at step (\d+)", err).group(1))
    steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
    assert steps and steps[-1] < nan_step and f"The last checkpoint, step {steps[-1]}" in err
    assert all(_saved_params_finite(wd, s) for s in steps)
    # a silent change of the learning rate stays refused; the explicit choice is honoured and recorded
    assert main(base + ["--config.train.learning_rate=1e-3"]) == 2
    assert "train.learning_rate: saved 1000000.0 != now 0.001" in capsys.readouterr().err
    first = steps[0]
    assert main(base + ["--config.train.learning_rate=1e-3", "--resume-from", str(first),
                        "--allow-change", "train.learning_rate"]) == 0
    history = [json.loads(line) for line in open(os.path.join(wd, "history.jsonl"))]
    assert [h["event"] for h in history] == ["config_change", "resume_from"]
    assert history[0]["changes"] == {"train.learning_rate": [1e6, 1e-3]}
    assert history[1]["step"] == first and history[1]["set_aside"] == steps[1:]
    assert sorted(int(d) for d in os.listdir(history[1]["to"])) == steps[1:]  # set aside, not deleted
    rows = [json.loads(line)["step"] for line in open(os.path.join(wd, "metrics.jsonl"))]
    assert rows == list(range(1, 9))  # each step once: the diverged trajectory's rows past the resume are gone
    assert os.path.exists(os.path.join(wd, "model", "bitembed_config.json"))


def test_a_checkpoint_holding_nan_is_refused_when_restored(bitnet_dir, tmp_path):
    """Checkpoints written before the loop refused non-finite states may hold NaN: resuming names them."""
    import orbax.checkpoint as ocp

    wd = str(tmp_path)
    train(quick_cfg(bitnet_dir, "--config.train.num_steps=3", "--config.checkpoint.every_steps=1"), wd)
    state_dir = os.path.join(wd, "checkpoints", "3", "state")
    tree = ocp.PyTreeCheckpointer().restore(state_dir)
    tree["params"] = jax.tree.map(lambda x: np.full_like(np.asarray(x), np.nan), tree["params"])
    shutil.rmtree(state_dir)
    ocp.PyTreeCheckpointer().save(state_dir, tree)
    named = (r"checkpoint step 3 in .* holds non-finite parameters \(saved by a diverged run\); resume from an "
             r"earlier one with --resume-from STEP \(saved: \[1, 2\]\)")
    with pytest.raises(ValueError, match=named):
        train(quick_cfg(bitnet_dir, "--config.train.num_steps=5", "--config.checkpoint.every_steps=1"), wd)


@pytest.mark.parametrize("override,match", [
    ("--config.train.batch_size=12",
     r"config.train.batch_size=12 must be divisible by the batch mesh axes data\*fsdp=8"),
    ("--config.mesh.data=4", r"has 4 devices, but 8 are available"),
    ("--config.loss.num_chunks=3", r"config.loss.num_chunks=3"),
    ("--config.data.train_files=/nonexistent.jsonl", r"config.data.train_files: /nonexistent.jsonl not found"),
    ("--config.init.model=/nonexistent", r"config.init.model='/nonexistent' is not a local folder"),
    ("--config.train.freeze=['[']", r"config.train.freeze: '\[' is not a valid regular expression"),
    ("--config.train.batch_size=0", r"config.train.batch_size=0 must be > 0"),
    ("--config.train.learning_rate=-1.0", r"config.train.learning_rate=-1.0 must be > 0"),
    ("--config.init.mode=bitnett", r"config.init.mode='bitnett' is not one of fp, bitnet"),
    ("--config.init.act_bits=2", r"config.init.act_bits=2 is not one of 8, 4"),
])
def test_config_errors(bitnet_dir, override, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        validate_config(quick_cfg(bitnet_dir, override), 8)


def test_freeze_keeps_embeddings_and_drops_their_moments(bitnet_dir, tmp_path):
    from flax import nnx

    from bitembed_jax.io.load import load_model_dir
    from bitembed_jax.io.state_paths import flat_params
    from bitembed_jax.train.optimizer import make_optimizer

    cfg = quick_cfg(bitnet_dir, "--config.train.freeze=['embed_tokens']", "--config.train.num_steps=3")
    out = train(cfg, str(tmp_path))
    model, _ = load_model_dir(bitnet_dir)
    before = {k: np.asarray(v) for k, v in flat_params(nnx.state(model)).items()}
    after = {k: np.asarray(v) for k, v in flat_params(nnx.state(load_model_dir(out)[0])).items()}
    assert np.array_equal(before["embed_tokens.embedding"], after["embed_tokens.embedding"])
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed  # everything else trains
    assert not any("embed_tokens" in k for k in changed)
    # AdamW keeps two moments per trainable parameter and none for the frozen table
    params = {"model": nnx.to_pure_dict(nnx.state(model))}
    sizes = lambda tree: sum(x.size for x in jax.tree.leaves(tree) if hasattr(x, "size") and x.ndim)  # noqa: E731
    opt = make_optimizer(cfg.train)[0].init(params)
    assert sizes(opt) == 2 * (sizes(params) - before["embed_tokens.embedding"].size)


@pytest.mark.parametrize("pattern,match", [
    ("no_such_param", r"config.train.freeze: 'no_such_param' matches no parameter"),
    (".", r"freezes every parameter"),
])
def test_freeze_errors(bitnet_dir, tmp_path, pattern, match):
    with pytest.raises(ValueError, match=match):
        train(quick_cfg(bitnet_dir, f"--config.train.freeze=['{pattern}']"), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def _free(monkeypatch, nbytes):
    import types

    from bitembed_jax.train import checkpoint

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=nbytes))


def test_disk_room_counts_kept_checkpoints_and_the_model(tmp_path, monkeypatch):
    """keep + 1 state copies at the peak (orbax writes before it rotates), minus those already on disk, plus
    the final model folder; a run too short to reach keep saves needs fewer copies (its first and last step)."""
    import ml_collections

    from bitembed_jax.train.checkpoint import check_disk_room

    f32 = lambda n: jax.ShapeDtypeStruct((n,), np.float32)  # noqa: E731
    state = {"params": {"w": f32(1024)}, "opt_state": {"mu": f32(1024)}, "step": jax.ShapeDtypeStruct((), np.int32)}
    per_copy, model = 8196, 4096
    ckpt = ml_collections.ConfigDict({"every_steps": 10, "keep": 2})
    wd = str(tmp_path)
    cases = [((100, 0, 0), 3 * per_copy + model),  # saves at 0, 10, ..., 100: peak keep + 1 = 3
             ((5, 0, 0), 2 * per_copy + model)]     # only the first and the last (forced) step are saved
    for (steps, start, saved), needed in cases:
        _free(monkeypatch, needed)
        check_disk_room(wd, state, ckpt, steps, start, saved)
        _free(monkeypatch, needed - 1)
        with pytest.raises(OSError, match=r"needs about .*config.checkpoint.keep=2"):
            check_disk_room(wd, state, ckpt, steps, start, saved)
    os.makedirs(tmp_path / "checkpoints" / "10")
    (tmp_path / "checkpoints" / "10" / "blob").write_bytes(b"\0" * per_copy)  # one copy already held
    os.makedirs(tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp")  # a crashed save's leftovers don't count
    (tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp" / "blob").write_bytes(b"\0" * per_copy)
    _free(monkeypatch, 2 * per_copy + model)
    check_disk_room(wd, state, ckpt, 100, 10, 1)
    _free(monkeypatch, 2 * per_copy + model - 1)
    with pytest.raises(OSError):
        check_disk_room(wd, state, ckpt, 100, 10, 1)
    check_disk_room("gs://bucket/run", state, ckpt, 100, 0, 0)  # remote stores are not measured


def test_full_disk_refused_before_the_first_step(bitnet_dir, tmp_path, monkeypatch):
    _free(monkeypatch, 1 << 20)
    with pytest.raises(OSError, match=rf"{tmp_path}: 0.0 GiB free on its disk, but this run needs about"):
        train(quick_cfg(bitnet_dir), str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl") or not open(tmp_path / "metrics.jsonl").read()
    assert not os.listdir(tmp_path / "checkpoints")


def test_failed_save_names_the_checkpoint_that_survives(bitnet_dir, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from bitembed_jax.train.checkpoint import CheckpointSaveError

    real_save = ocp.CheckpointManager.save

    def save(self, step, *a, **k):  # orbax itself fails, as on a full disk (steps 1, 3 and the last, 6, are saved)
        if step == 6:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointSaveError, match=r"failed at step 6: .*No space left on device\n"
                                                  r"The last complete checkpoint \(step 3\) is intact"):
        train(quick_cfg(bitnet_dir), str(tmp_path))
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert train(quick_cfg(bitnet_dir), str(tmp_path))  # resumes from step 3 and finishes
    assert len(losses(str(tmp_path))) == 6


def _async_saves_fail(monkeypatch, steps):
    """Saves of ``steps`` are begun but never finish; the error surfaces when the run waits for them."""
    import orbax.checkpoint as ocp

    real_save, real_wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished
    pending = []

    def save(self, step, *a, **k):
        if step in steps:
            pending.append(step)
            return True
        return real_save(self, step, *a, **k)

    def wait(self):
        real_wait(self)
        if pending:
            pending.clear()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait)


def test_failed_final_async_save_is_reported_and_resumable(bitnet_dir, tmp_path, monkeypatch):
    from bitembed_jax.train.checkpoint import CheckpointSaveError

    _async_saves_fail(monkeypatch, {6})
    with pytest.raises(CheckpointSaveError, match=r"failed at step 6: .*No space left on device\n"
                                                  r"The last complete checkpoint \(step 3\) is intact"):
        train(quick_cfg(bitnet_dir, "--config.checkpoint.async_save=True"), str(tmp_path))
    assert not os.path.exists(tmp_path / "model"), "no model folder from a run whose last checkpoint failed"
    monkeypatch.undo()
    assert train(quick_cfg(bitnet_dir), str(tmp_path))  # resumes from step 3 and finishes
    assert len(losses(str(tmp_path))) == 6


def test_a_failing_save_does_not_mask_the_error_that_stopped_the_run(bitnet_dir, tmp_path, monkeypatch, caplog):
    cfg = quick_cfg(bitnet_dir, "--config.train.learning_rate=1e30", "--config.checkpoint.every_steps=1",
                    "--config.train.grad_clip=0.0")
    _async_saves_fail(monkeypatch, range(1, 7))
    with pytest.raises(NonFiniteLoss, match=r"at step (\d+)") as stopped:
        train(cfg, str(tmp_path))
    nan_step = int(re.search(r"at step (\d+)", str(stopped.value)).group(1))
    assert f"failed at step {nan_step - 1}: [Errno 28] No space left on device\nNo checkpoint was completed" \
        in caplog.text


def _no_training_in(wd):
    return not os.path.exists(os.path.join(wd, "metrics.jsonl")) and not os.path.exists(os.path.join(wd, "checkpoints"))


@pytest.mark.parametrize("override, named", [
    ("--config.init.norm=subln", "config.init.norm='subln' but {dir} holds a model with norm='per_linear'"),
    ("--config.init.pooling=mean", "config.init.pooling='mean' but {dir} holds a model with pooling='last'"),
    ("--config.init.act_bits=4", "config.init.act_bits=4 but {dir} holds a model with act_bits=8"),
    ("--config.init.mode=fp", "config.init.mode='fp' but {dir} holds a 'bitnet' model"),
])
def test_init_keys_must_agree_with_the_model_folder(bitnet_dir, tmp_path, override, named):
    """A model folder fixes these: a key that disagreed was recorded in config.json while the folder's value
    trained."""
    with pytest.raises(ValueError, match=re.escape(named.format(dir=bitnet_dir))):
        train(quick_cfg(bitnet_dir, override), str(tmp_path / "w"))
    assert _no_training_in(str(tmp_path / "w"))


def test_matryoshka_dims_wider_than_the_model_are_refused_before_the_data(bitnet_dir, tmp_path):
    with pytest.raises(ValueError, match=re.escape("config.loss.matryoshka_dims: [512] exceed the model's hidden "
                                                   "size 64")):
        train(quick_cfg(bitnet_dir, "--config.loss.matryoshka_dims=[0,512]"), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "dataset") and _no_training_in(str(tmp_path / "w"))


def test_a_run_that_failed_before_its_first_checkpoint_does_not_lock_its_workdir(bitnet_dir, tmp_path, capsys):
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    rows = [json.dumps({"query": f"question {i} about words", "positive": f"answer {i} with words"}) for i in range(40)]
    bad.write_text("\n".join(rows[:2] + ["{not json"] + rows[2:]) + "\n")
    good.write_text("\n".join(rows) + "\n")
    wd = str(tmp_path / "w")
    with pytest.raises(ValueError, match="bad.jsonl:3: malformed JSON"):
        train(quick_cfg(bitnet_dir, f"--config.data.train_files=['{bad}']"), wd)
    out = train(quick_cfg(bitnet_dir, f"--config.data.train_files=['{good}']", "--config.train.num_steps=3"), wd)
    assert "its earlier run stopped before its first checkpoint; starting over" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "bitembed_config.json"))
    with open(os.path.join(wd, "config.json")) as f:
        assert json.load(f)["data"]["train_files"] == [str(good)]
    with pytest.raises(ValueError, match="holds a run with a different config"):  # now it holds a run
        train(quick_cfg(bitnet_dir, f"--config.data.train_files=['{bad}']"), wd)


def test_a_workdir_that_is_a_file_or_an_unfinished_run(bitnet_dir, tmp_path, capsys):
    from bitembed_jax.train.checkpoint import check_or_write_config

    (tmp_path / "f").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="--workdir .*/f is a file, not a folder"):
        train(quick_cfg(bitnet_dir), str(tmp_path / "f"))
    unfinished = tmp_path / "unfinished"
    check_or_write_config(str(unfinished), quick_cfg(bitnet_dir))  # what a run writes first
    with pytest.raises(FileNotFoundError, match="unfinished is a training workdir without a model folder .*"
                                                "it saved no checkpoint"):
        train(quick_cfg(str(unfinished)), str(tmp_path / "w"))
    from bitembed_jax.cli import main

    (unfinished / "checkpoints" / "4").mkdir(parents=True)
    for argv in (["export", "--checkpoint", str(unfinished), "--out", str(tmp_path / "x"), "--format", "base3"],
                 ["encode", "--model", str(unfinished), "--input", str(tmp_path / "f"),
                  "--out", str(tmp_path / "v.npy")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "unfinished is a training workdir without a model folder" in err
        assert "(its latest checkpoint is step 4); rerun its train command to finish it" in err


def test_cli_names_a_misspelled_config_key_without_repr_quotes(tmp_path, capsys):
    from bitembed_jax.cli import main

    argv = ["train", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", str(tmp_path / "w"),
            "--config.train.batch_sise=8"]
    assert main(argv) == 2
    assert capsys.readouterr().err == "error: config key config.train.batch_sise does not exist\n"
    assert not (tmp_path / "w").exists()
