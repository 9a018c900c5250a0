"""``bitembed-jax train``: check, load the student, build data, run the jitted step, checkpoint, resume."""
import os
import signal
import sys
import time

import jax
import numpy as np
from flax import nnx

from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import resolve_model_dir, save_model_dir
from bitembed_jax.parallel.mesh import make_mesh, maybe_initialize_distributed
from bitembed_jax.train.build import build_step, load_student, load_teacher, read_teacher_config, student_config
from bitembed_jax.train.checkpoint import Checkpointer, check_disk_room, check_or_write_config
from bitembed_jax.train.config_checks import (check_teacher_fits, check_teacher_tokenizer, uses_teacher,
                                              validate_config)
from bitembed_jax.train.metrics import MetricsWriter
from bitembed_jax.train.step import with_shardings
from bitembed_jax.train.tiny_backbone import make_tiny_backbone, tiny_arch


class NonFiniteLoss(RuntimeError):
    pass


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
    if tiny_arch(cfg.init.model):  # the quickstart's: the work dir's config.json keeps "tiny:ARCH"
        cfg.init.model = make_tiny_backbone(cfg.init.model, workdir)
    if restarted:
        print(f"{workdir}: its earlier run stopped before its first checkpoint; starting over with this config")
        if is_main:
            from bitembed_jax.train.data_setup import drop_stale_dataset

            drop_stale_dataset(cfg, workdir)
    mesh = make_mesh(cfg.mesh, devices)
    if uses_teacher(cfg):  # from the two configs, before a weight is read or the dataset built
        check_teacher_fits(cfg, student_config(cfg), read_teacher_config(cfg))

    model, mcfg = load_student(cfg)
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
    teacher_args = ()
    if uses_teacher(cfg):
        t_graphdef, t_state = nnx.split(load_teacher(cfg, mcfg))
        fns = build_step(cfg, graphdef, model_state, mesh, teacher=(t_graphdef, t_state),
                         loss_and_grads=loss_and_grads)
        teacher_args = (jax.device_put(nnx.to_pure_dict(t_state), fns.teacher_shardings),)
        del t_state
    else:
        fns = build_step(cfg, graphdef, model_state, mesh, loss_and_grads=loss_and_grads)
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
    compiled = set()
    try:
        for step in range(start + 1, int(cfg.train.num_steps) + 1):
            host_batch = next(data_iter)
            batch = global_batch(host_batch, fns.batch_shardings)
            program = fns.step_for(step - 1)
            if program not in compiled:  # seconds on the quickstart, minutes on a real model: say why we wait
                writer.message(f"step {step}: compiling the train step"
                               + (" (gradual quantization: its warmup program)" if program is fns.warmup_step else ""))
                compiled.add(program)
            state, metrics = program(state, batch, *teacher_args)
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
