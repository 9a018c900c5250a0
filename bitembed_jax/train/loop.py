"""``bitembed-jax train``: validate, load the student, build data, run the jitted step, checkpoint, resume."""
import os
import re
import signal
import sys
import time

import jax
import numpy as np
from flax import nnx

from bitembed_jax.convert.fp_to_bitnet import converts, fp_to_bitnet
from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import CONFIG_NAME, read_config, resolve_model_dir, save_model_dir
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.choices import INIT_CHOICES, PRECISIONS, TRAINING_STAGES
from bitembed_jax.parallel.mesh import make_mesh, maybe_initialize_distributed, mesh_shape
from bitembed_jax.train.checkpoint import Checkpointer, check_disk_room, check_or_write_config
from bitembed_jax.train.metrics import MetricsWriter
from bitembed_jax.train.optimizer import make_optimizer
from bitembed_jax.train.step import make_train_step, with_shardings


class NonFiniteLoss(RuntimeError):
    pass


def check_folder(key: str, path: str):
    if paths.is_remote(path):
        if not paths.exists(path):
            raise FileNotFoundError(f"config.{key}={path!r} not found")
    elif not os.path.isdir(path):
        raise FileNotFoundError(f"config.{key}={path!r} is not a local folder")


def localize_inputs(cfg):
    """A copy of ``cfg`` whose remote (gs://) model folders and training files are per-host local copies.

    transformers, the JSONL/Parquet reader and the dataset build read local files; every host of a pod
    downloads its own copy once (see ``paths.local_copy``). The work dir keeps the user's paths.
    """
    cfg = cfg.copy_and_resolve_references()
    cfg.init.model = paths.local_copy(cfg.init.model, "models")
    if cfg.teacher.model:
        cfg.teacher.model = paths.local_copy(cfg.teacher.model, "models")
    cfg.data.train_files = [paths.local_copy(f, "data") for f in cfg.data.train_files]
    return cfg


def validate_config(cfg, num_devices: int, num_processes: int = 1, check_paths: bool = True):
    """Cheap checks before anything is compiled or trained; each error names its config key."""
    for key, choices in INIT_CHOICES.items():
        if cfg.init[key] not in choices:
            raise ValueError(f"config.init.{key}={cfg.init[key]!r} is not one of {', '.join(map(str, choices))}")
    if check_paths:
        if not cfg.init.model:
            raise ValueError("config.init.model is empty: give a local HF folder or a bitembed-jax model folder")
        check_folder("init.model", cfg.init.model)
        if not cfg.data.train_files:
            raise ValueError("config.data.train_files is empty")
        for f in cfg.data.train_files:
            if not paths.exists(f):
                raise FileNotFoundError(f"config.data.train_files: {f} not found")
    data, fsdp, _ = mesh_shape(cfg.mesh, num_devices)
    bs, chunks = int(cfg.train.batch_size), int(cfg.loss.num_chunks)
    if bs <= 0:
        raise ValueError(f"config.train.batch_size={bs} must be > 0")
    if bs % (data * fsdp):
        raise ValueError(f"config.train.batch_size={bs} must be divisible by the batch mesh axes "
                         f"data*fsdp={data * fsdp}")
    if bs % num_processes:
        raise ValueError(f"config.train.batch_size={bs} must be divisible by the number of hosts {num_processes}")
    if chunks < 1 or bs % (chunks * data * fsdp):
        raise ValueError(f"config.loss.num_chunks={chunks}: batch_size {bs} must split into {chunks} chunks "
                         f"that each divide over data*fsdp={data * fsdp}")
    qb = int(cfg.loss.query_block)
    local = bs // (data * fsdp)  # the loss always sees the whole batch, chunked or not
    if qb < 0 or (qb and local % qb):
        raise ValueError(f"config.loss.query_block={qb} must divide the per-device batch {local} "
                         f"(batch_size / (data*fsdp)), or be 0")
    if cfg.loss.learnable_temperature and chunks > 1:
        raise ValueError("config.loss.learnable_temperature needs config.loss.num_chunks=1 (GradCache keeps "
                         "the temperature fixed)")
    bad = sorted(set(cfg.loss.precisions) - set(PRECISIONS))
    if bad:
        raise ValueError(f"config.loss.precisions: unknown precisions {bad}; use {', '.join(PRECISIONS)}")
    if not any(w > 0 for w in cfg.loss.precisions.values()):
        raise ValueError("config.loss.precisions: at least one precision needs a positive weight")
    if any(int(d) < 0 for d in cfg.loss.matryoshka_dims) or not cfg.loss.matryoshka_dims:
        raise ValueError(f"config.loss.matryoshka_dims={list(cfg.loss.matryoshka_dims)}: dims >= 0 (0 = full), "
                         "at least one")
    if cfg.stage not in TRAINING_STAGES:
        raise ValueError(f"config.stage={cfg.stage!r} must be one of {', '.join(TRAINING_STAGES)}")
    for key in DISTILL_WEIGHTS:
        if cfg.distill[key] < 0:
            raise ValueError(f"config.distill.{key}={cfg.distill[key]} must be >= 0")
    if uses_teacher(cfg):
        if not cfg.teacher.model:
            raise ValueError("config.teacher.model is empty but distillation weights are set "
                             "(give --teacher HF_OR_MODEL_DIR, or set config.distill.*_weight=0)")
        if check_paths:
            check_folder("teacher.model", cfg.teacher.model)
        if chunks > 1:
            raise ValueError("config.loss.num_chunks must be 1 when distilling: the teacher runs in the same step")
    if cfg.loss.temperature <= 0:
        raise ValueError(f"config.loss.temperature={cfg.loss.temperature} must be > 0")
    for pattern in cfg.train.get("freeze", []):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"config.train.freeze: {pattern!r} is not a valid regular expression: {e}") from None
    if cfg.train.num_steps <= 0:
        raise ValueError(f"config.train.num_steps={cfg.train.num_steps} must be > 0")
    if cfg.train.learning_rate <= 0:
        raise ValueError(f"config.train.learning_rate={cfg.train.learning_rate} must be > 0")
    warmup = cfg.train.quant_warmup_steps
    if not 0 <= warmup < cfg.train.num_steps:
        raise ValueError(f"config.train.quant_warmup_steps={warmup} must be >= 0 and below train.num_steps="
                         f"{cfg.train.num_steps}: the run has to end fully quantized")
    if warmup and cfg.init.mode != "bitnet":
        raise ValueError(f"config.train.quant_warmup_steps={warmup} blends in the BitNet conversion; "
                         f"config.init.mode={cfg.init.mode!r} has none (use 0)")


DISTILL_WEIGHTS = ("sim_weight", "attn_weight", "embed_weight", "hidden_weight")


def uses_teacher(cfg) -> bool:
    return cfg.stage == "finetune" and any(cfg.distill[k] > 0 for k in DISTILL_WEIGHTS)


def check_teacher_tokenizer(teacher_dir: str, student_tokenizer):
    """The teacher reads the student's token ids: the same size of vocabulary is not enough, each id must be
    the same token."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    ours = student_tokenizer.get_vocab()
    if theirs != ours:
        differ = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(f"config.teacher.model={teacher_dir!r}: its tokenizer differs from the student's "
                         f"({len(theirs)} vs {len(ours)} tokens; e.g. {differ}); teacher and student must share "
                         "the tokenizer")


def load_teacher(cfg, student_cfg):
    """The frozen full-precision teacher (HF folder imported in fp mode, or one of our fp model folders)."""
    path = cfg.teacher.model
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        model, tcfg = load_model_dir(path, dtype=cfg.train.dtype)
    else:
        from bitembed_jax.convert.hf_import import import_hf

        model, tcfg = import_hf(path, mode="fp", attention=cfg.init.attention, pooling=cfg.init.pooling,
                                dtype=cfg.train.dtype)
    if tcfg.mode != "fp":
        raise ValueError(f"config.teacher.model={path!r} holds a {tcfg.mode!r} model; the teacher must be fp")
    if tcfg.vocab_size != student_cfg.vocab_size:
        raise ValueError(f"config.teacher.model: vocabulary {tcfg.vocab_size} != the student's "
                         f"{student_cfg.vocab_size}; teacher and student must share the tokenizer")
    aligned = [k for k in ("embed_weight", "hidden_weight") if cfg.distill[k] > 0]
    if aligned and tcfg.hidden_size != student_cfg.hidden_size:
        raise ValueError(f"config.distill.{aligned[0]}: the teacher's hidden size {tcfg.hidden_size} != the "
                         f"student's {student_cfg.hidden_size}; vector alignment needs equal widths")
    return model


def check_init_model(init, mcfg, path: str):
    """config.init describes the student; a model folder already fixes some of it, and a key that disagrees
    would be recorded in the run's config.json while the folder's value trains. The BitNet options of an fp
    folder converted at load (norm, activation bits) are config.init's to choose."""
    if mcfg.mode != init.mode and not converts(mcfg, init):
        raise ValueError(f"config.init.mode={init.mode!r} but {path} holds a {mcfg.mode!r} model")
    keys = ("norm", "act_bits", "attention", "pooling") if mcfg.mode == "bitnet" else ("attention", "pooling")
    diff = [f"config.init.{k}={init[k]!r} but {path} holds a model with {k}={getattr(mcfg, k)!r}" for k in keys
            if init[k] != getattr(mcfg, k)]
    if diff:
        raise ValueError("; ".join(diff) + " (set the config key to the model's value, or convert the model again)")


def load_student(init, dtype: str, remat: bool):
    """(model, cfg) from one of our model folders or a local HF folder (converted on the fly)."""
    path = init.model
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        check_init_model(init, read_config(path)[0], path)  # before any weight is read
        model, mcfg = load_model_dir(path, dtype=dtype, remat=remat)
        if converts(mcfg, init):  # e.g. a student started from the fp teacher
            return fp_to_bitnet(model, mcfg, init)
        return model, mcfg
    from bitembed_jax.convert.hf_import import import_hf

    return import_hf(path, mode=init.mode, norm=init.norm, act_bits=init.act_bits, attention=init.attention,
                     pooling=init.pooling, dtype=dtype, remat=remat)


def global_batch(local: dict, shardings: dict):
    """Each host's slice of the global batch -> global arrays laid out as the step expects."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in local.items()
            if k in shardings}


class _Preemption:
    """SIGTERM (TPU preemption) asks the loop to checkpoint and stop at the next step."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_):
        if not self.requested:  # a step plus a checkpoint of a real model takes a while: say what is coming
            print("SIGTERM: stopping after the current step and its checkpoint", file=sys.stderr, flush=True)
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def train(cfg, workdir: str, *, devices=None, make_pipeline=None, loss_and_grads=None):
    """Run (or resume) a training run in ``workdir``; returns the final model folder (None if stopped early).

    ``devices`` restricts the mesh to some local devices (tests compare meshes in one process).
    """
    maybe_initialize_distributed()
    cfg.init.model = resolve_model_dir(cfg.init.model)
    devices = list(devices) if devices is not None else jax.devices()
    validate_config(cfg, len(devices), jax.process_count())
    workdir = paths.absolute(workdir)
    is_main = jax.process_index() == 0
    restarted = check_or_write_config(workdir, cfg, is_writer=is_main)
    cfg = localize_inputs(cfg)
    if restarted:
        print(f"{workdir}: its earlier run stopped before its first checkpoint; starting over with this config")
        if is_main:
            from bitembed_jax.train.data_setup import drop_stale_dataset

            drop_stale_dataset(cfg, workdir)
    mesh = make_mesh(cfg.mesh, devices)

    model, mcfg = load_student(cfg.init, cfg.train.dtype, cfg.train.remat)
    too_wide = [int(d) for d in cfg.loss.matryoshka_dims if int(d) > mcfg.hidden_size]
    if too_wide:
        raise ValueError(f"config.loss.matryoshka_dims: {too_wide} exceed the model's hidden size {mcfg.hidden_size}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.init.model)
    if uses_teacher(cfg):  # before the dataset is built and the step compiled
        check_teacher_tokenizer(cfg.teacher.model, tokenizer)
    from bitembed_jax.train.data_setup import pipeline_from_config, query_prefix

    pipeline = (make_pipeline or pipeline_from_config)(cfg, workdir, tokenizer, mcfg)
    graphdef, model_state = nnx.split(model)
    tx, schedule = make_optimizer(cfg.train)
    teacher_args = ()
    if uses_teacher(cfg):
        from bitembed_jax.train.finetune import finetune_loss_and_grads

        t_graphdef, t_state = nnx.split(load_teacher(cfg, mcfg))
        fns = make_train_step(cfg, graphdef, model_state, mesh, tx, schedule,
                              loss_and_grads=loss_and_grads or finetune_loss_and_grads, teacher=(t_graphdef, t_state))
        teacher_args = (jax.device_put(nnx.to_pure_dict(t_state), fns.teacher_shardings),)
        del t_state
    else:
        fns = make_train_step(cfg, graphdef, model_state, mesh, tx, schedule, loss_and_grads=loss_and_grads)
    ckpt = Checkpointer(workdir, cfg.checkpoint)
    data_iter = iter(pipeline)
    start = ckpt.latest_step()
    # every host checks (a multi-host work dir is shared), so all stop together rather than some hang
    check_disk_room(workdir, fns.abstract_state, cfg.checkpoint, int(cfg.train.num_steps), start or 0,
                    ckpt.num_saved())
    if start is not None:
        state, data_state = ckpt.restore(start, with_shardings(fns.abstract_state, fns.state_shardings))
        data_iter.set_state(data_state)
    else:
        start = 0
        state = fns.init(nnx.to_pure_dict(model_state))
    del model, model_state

    writer = MetricsWriter(workdir, int(cfg.train.num_steps), start)
    if start:
        writer.message(f"resumed from step {start} in {ckpt.directory}")
    preempt = _Preemption()
    tokens_per_pair = cfg.data.query_max_len + cfg.data.passage_max_len * (1 + cfg.data.num_negatives)
    last_good = start
    t0, real_tokens = time.perf_counter(), 0
    try:
        for step in range(start + 1, int(cfg.train.num_steps) + 1):
            host_batch = next(data_iter)
            batch = global_batch(host_batch, fns.batch_shardings)
            state, metrics = fns.step_for(step - 1)(state, batch, *teacher_args)
            metrics = jax.device_get(metrics)
            real_tokens += int(metrics.pop("tokens"))
            if not np.isfinite(metrics["loss"]):
                raise NonFiniteLoss(f"loss is {metrics['loss']} at step {step}; stopping. The last good "
                                    f"checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is intact.")
            last_good = step
            writer.advance()
            if step % cfg.train.log_every == 0 or step == cfg.train.num_steps:
                dt = time.perf_counter() - t0
                n = cfg.train.log_every if step % cfg.train.log_every == 0 else step % cfg.train.log_every
                metrics.update(pairs_per_s=n * cfg.train.batch_size / dt, tokens_per_s=real_tokens / dt,
                               padded_tokens_per_s=n * cfg.train.batch_size * tokens_per_pair / dt)
                writer.write(step, metrics)
                t0, real_tokens = time.perf_counter(), 0
            ckpt.save(step, state, data_iter.get_state(), force=preempt.requested)
            if preempt.requested:
                writer.message(f"SIGTERM: saved step {step}, stopping")
                break
    except BaseException:
        ckpt.abandon()
        raise
    else:
        ckpt.close()  # the final async save's failure surfaces here, as a CheckpointSaveError
    finally:
        preempt.restore()
        writer.close()
    if last_good < cfg.train.num_steps:
        return None
    final = nnx.merge(graphdef, jax.device_get(state["params"]["model"]))
    out = os.path.join(workdir, "model")
    if is_main:
        save_model_dir(out, final, mcfg, tokenizer_dir=cfg.init.model, overwrite=True,
                       extra={"prompts": {"query": query_prefix(cfg)},
                              "train": {"steps": int(cfg.train.num_steps), "stage": cfg.stage},
                              "precisions": sorted({p for p, w in cfg.loss.precisions.items() if w > 0}),
                              "matryoshka_dims": sorted({int(d) for d in cfg.loss.matryoshka_dims})})
        writer.message(f"done: model folder {out}; metrics {os.path.join(workdir, 'metrics.jsonl')}; "
                       f"TensorBoard {os.path.join(workdir, 'tensorboard')}")
    return out
