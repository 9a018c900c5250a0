"""``bitembed-jax train``: check, load the student, build data, run the jitted step, checkpoint, resume.

One process or many (a pod: one per host, see ``parallel.distributed``): every process runs this same code on
its share of the data; the processes agree on errors, on when to stop, and on the final state, which process
0 alone writes as the model folder.
"""
import dataclasses
import json
import os
import signal
import sys
import time

import jax
import numpy as np
from etils import epath
from flax import nnx

from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import CONFIG_NAME, refuse_onnx_folder, resolve_model_dir, save_model_dir
from bitembed_jax.parallel.distributed import Watchdog, agree, any_process, heartbeat_timeout, join
from bitembed_jax.parallel import runtime_output
from bitembed_jax.parallel.mesh import make_mesh
from bitembed_jax.train.build import (build_step, for_platform, load_student, load_teacher, read_teacher_config,
                                      student_config)
from bitembed_jax.train.checkpoint import Checkpointer, check_disk_room, check_or_write_config
from bitembed_jax.train.config_checks import (check_teacher_fits, check_teacher_tokenizer, uses_teacher,
                                              validate_config)
from bitembed_jax.train.data_setup import drop_stale_dataset, needs_local_files, pipeline_from_config, query_prefix
from bitembed_jax.train.metrics import MetricsWriter
from bitembed_jax.train.resume import check_finite_state, resume_hint, set_aside_later_checkpoints
from bitembed_jax.train.step import with_shardings
from bitembed_jax.train.tiny_backbone import make_tiny_backbone, tiny_arch


class NonFiniteLoss(ValueError):
    """The run diverged: a step's loss, gradients or updated parameters are not finite (it was not saved)."""


def localize_inputs(cfg):
    """A copy of ``cfg`` whose remote (gs://) model folders, and training files that a dataset is built from,
    are per-host local copies (a prepared dataset and stream mode read in place).

    transformers, the JSONL/Parquet reader and the dataset build read local files; every host of a pod
    downloads its own copy once (see ``paths.local_copy``). The work dir keeps the user's paths.
    """
    cfg = cfg.copy_and_resolve_references()
    cfg.init.model = paths.local_copy(cfg.init.model, "models")
    if cfg.teacher.model:
        cfg.teacher.model = paths.local_copy(cfg.teacher.model, "models")
    if needs_local_files(cfg):
        cfg.data.train_files = [paths.local_copy(f, "data") for f in cfg.data.train_files]
    return cfg


def global_batch(local: dict, shardings: dict):
    """Each host's slice of the global batch -> global arrays laid out as the step expects."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in local.items()
            if k in shardings}


class Interrupts:
    """SIGTERM (TPU maintenance, a scheduler) and a first Ctrl-C ask the loop to checkpoint and stop after the
    current step; a second Ctrl-C aborts at once (exit 130)."""

    def __init__(self):
        self.requested = None  # the name of the signal that asked
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            # at once: unwinding through a checkpoint save in flight can wait on orbax's threads; a half-written
            # checkpoint is a temporary folder that the next run ignores
            sys.stderr.write("\naborted (second Ctrl-C): nothing saved since the last checkpoint\n")
            sys.stderr.flush()
            runtime_output.flush()
            os._exit(130)
        if not self.requested:  # a step plus a checkpoint of a real model takes a while: say what is coming
            again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
            print(f"{name}: stopping after the current step and its checkpoint{again}", file=sys.stderr, flush=True)
            self.requested = name

    def restore(self):
        for s, old in self._old.items():
            signal.signal(s, old)


@dataclasses.dataclass
class Run:
    """What ``setup`` builds and the loop advances."""
    cfg: object
    workdir: str
    mcfg: object
    graphdef: object
    fns: object
    state: dict
    data_iter: object
    ckpt: Checkpointer
    teacher_args: tuple
    start: int
    started_from: str  # the init model as the user named it (recorded in the model folder, checked by average)
    pipeline: object = None


def train(cfg, workdir: str, *, devices=None, make_pipeline=None, loss_and_grads=None, resume_from=None,
          allow_change=()):
    """Run (or resume) a training run in ``workdir``; returns the final model folder, or None when a signal
    stopped it early (checkpointed: the same command resumes).

    ``devices`` restricts the mesh to some local devices (tests compare meshes in one process).
    ``resume_from``: a saved step to continue from; later checkpoints are set aside (``train.resume``).
    ``allow_change``: config keys that may differ from the work dir's record (``--allow-change``).
    """
    join()
    workdir = paths.absolute(workdir)
    watchdog = Watchdog(heartbeat_timeout(), lambda: resume_hint(workdir)).start()
    try:
        run = setup(cfg, workdir, devices, make_pipeline, loss_and_grads, resume_from, allow_change)
        if run is None:  # finished by an earlier run: nothing loaded, built or written
            return paths.join(workdir, "model")
        done = run_steps(run)
        _end_data(run)
        if not done:
            return None
        return finish(run)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError):
        raise  # bad input, a refused config, a diverged run: the same on every process, reported at once
    except Exception:
        # a peer that died breaks the collectives first (gloo: "Connection reset by peer", or an error raised
        # from them): let the watchdog name it, rather than report the broken socket
        watchdog.settle()
        raise
    finally:
        watchdog.stop()


def check_workdir_apart(cfg, given_init: str, workdir: str):
    """The work dir is written (config, checkpoints, dataset, model/): it must not be, hold or lie inside what
    the run reads, or a rerun would read its own output (and ``encode`` of the folder its input)."""
    inputs = [("--init-from (config.init.model)", given_init, cfg.init.model)]
    if cfg.teacher.model:
        inputs.append(("--teacher (config.teacher.model)", cfg.teacher.model))
    inputs += [("config.data.train_files", f) for f in cfg.data.train_files]
    paths.check_apart("--workdir", workdir, [i for i in inputs if not tiny_arch(i[1])],
                      "give the run a folder of its own")


def finished_at(workdir: str, num_steps: int) -> int | None:
    """The step a finished run in ``workdir`` trained to (its model/ folder records it) when that is at least
    ``num_steps``; None when there is training left to do."""
    meta = paths.join(workdir, "model", CONFIG_NAME)
    if not paths.exists(meta):
        return None
    steps = int((json.loads(epath.Path(meta).read_text()).get("train") or {}).get("steps") or 0)
    return steps if steps >= num_steps else None


def check_inputs_and_workdir(cfg, workdir, num_devices, resume_from, allow_change) -> tuple[bool, str, bool]:
    """Everything checked before a weight is read: the inputs, the config, the work dir's record of it.
    Returns (restarted: the work dir's earlier run left nothing to resume, started_from, finished: the work dir
    holds this run finished, which is said on stdout)."""
    given_init, cfg.init.model = cfg.init.model, resolve_model_dir(cfg.init.model)
    for model in (cfg.init.model, cfg.teacher.model):
        if model:
            refuse_onnx_folder(model)
    check_workdir_apart(cfg, given_init, workdir)
    started_from = cfg.init.model if tiny_arch(cfg.init.model) else paths.absolute(cfg.init.model)
    validate_config(cfg, num_devices, jax.process_count())
    is_main = jax.process_index() == 0
    error, restarted = None, False
    try:
        restarted = check_or_write_config(workdir, cfg, is_writer=is_main, allow_change=allow_change)
        if resume_from is not None and is_main:
            set_aside_later_checkpoints(workdir, int(resume_from))
    except Exception as e:  # noqa: BLE001 - re-raised by agree, on every process
        error = e
    agree(error, "checking the work dir")
    # process 0 decides for all: a pod's hosts may not share the work dir's files
    done = finished_at(workdir, int(cfg.train.num_steps)) if is_main and resume_from is None else None
    finished = any_process(done is not None)
    if finished and is_main:
        print(f"{workdir}: this run already finished at step {done} (model folder {paths.join(workdir, 'model')}); "
              f"nothing to do. Raise --config.train.num_steps to train on from its last checkpoint, or give a new "
              f"--workdir")
    return restarted, started_from, finished


def setup(cfg, workdir, devices, make_pipeline, loss_and_grads, resume_from, allow_change) -> Run | None:
    """The run to advance, or None when the work dir holds this run finished."""
    devices = list(devices) if devices is not None else jax.devices()
    restarted, started_from, finished = check_inputs_and_workdir(cfg, workdir, len(devices), resume_from,
                                                                 allow_change)
    if finished:
        return None
    is_main = jax.process_index() == 0
    cfg = localize_inputs(cfg)
    if tiny_arch(cfg.init.model):  # the quickstart's: the work dir's config.json keeps "tiny:ARCH"
        cfg.init.model = make_tiny_backbone(cfg.init.model, workdir)
    if restarted:
        print(f"{workdir}: its earlier run stopped before its first checkpoint; starting over with this config")
        if is_main:
            drop_stale_dataset(cfg, workdir)
    mesh = make_mesh(cfg.mesh, devices)
    if uses_teacher(cfg):  # from the two configs, before a weight is read or the dataset built
        check_teacher_fits(cfg, student_config(cfg), read_teacher_config(cfg))

    model, mcfg = load_student(cfg, for_platform(devices))
    too_wide = [int(d) for d in cfg.loss.matryoshka_dims if int(d) > mcfg.hidden_size]
    if too_wide:
        raise ValueError(f"config.loss.matryoshka_dims: {too_wide} exceed the model's hidden size {mcfg.hidden_size}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.init.model)
    if uses_teacher(cfg):  # before the dataset is built and the step compiled
        check_teacher_tokenizer(cfg.teacher.model, tokenizer)
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
    state, data_iter, ckpt, start = _initial_state(cfg, workdir, fns, model_state, pipeline)
    return Run(cfg, workdir, mcfg, graphdef, fns, state, data_iter, ckpt, teacher_args, start, started_from, pipeline)


def _end_data(run: Run):
    """Stop the data iterator's read-ahead (open gs:// files end cleanly, not at interpreter shutdown) and say
    what this process read of the training data (each its share; a pod's logs show every process's line)."""
    if hasattr(run.data_iter, "close"):
        run.data_iter.close()
    n = getattr(run.pipeline, "records_read", None)
    if n is not None:
        print(f"process {jax.process_index()} of {jax.process_count()} read {n} training records", flush=True)


def _initial_state(cfg, workdir, fns, model_state, pipeline):
    """(state, data iterator, checkpointer, start step): the latest checkpoint's, else a fresh start."""
    ckpt = Checkpointer(workdir, cfg.checkpoint)
    data_iter = iter(pipeline)
    start = ckpt.latest_step()
    # every host checks (a multi-host work dir is shared), so all stop together rather than some hang
    check_disk_room(workdir, fns.abstract_state, cfg.checkpoint, int(cfg.train.num_steps), start or 0,
                    ckpt.num_saved())
    if start is None:
        return fns.init(nnx.to_pure_dict(model_state)), data_iter, ckpt, 0
    state, data_state = ckpt.restore(start, with_shardings(fns.abstract_state, fns.state_shardings))
    check_finite_state(state, start, workdir)
    data_iter.set_state(data_state)
    return state, data_iter, ckpt, start


def _check_finite(metrics: dict, step: int, ckpt: Checkpointer):
    bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
    if not metrics.pop("params_finite"):
        bad.append("updated parameters")
    if bad:
        last = ckpt.latest_step()
        where = (f"The last checkpoint, step {last} in {ckpt.directory}, was saved before it (its parameters are "
                 f"checked again when restored): rerun the command to retry from it, or resume with a lower "
                 f"learning rate: --resume-from {last} --allow-change train.learning_rate "
                 f"--config.train.learning_rate=..." if last is not None else
                 "No checkpoint was saved before it: lower config.train.learning_rate and start again.")
        raise NonFiniteLoss(f"training diverged at step {step}: {', '.join(bad)} not finite "
                            f"(loss {metrics['loss']}, grad_norm {metrics['grad_norm']}); step {step} was not "
                            f"saved. {where}")


def run_steps(run: Run) -> bool:
    """Train from ``run.start`` to the end; False when a signal stopped it after a checkpoint."""
    cfg, ckpt, fns = run.cfg, run.ckpt, run.fns
    num_steps = int(cfg.train.num_steps)
    writer = MetricsWriter(run.workdir, num_steps, run.start)
    if run.start:
        writer.message(f"resumed from step {run.start} in {ckpt.directory}")
    interrupts = Interrupts()
    tokens_per_pair = cfg.data.query_max_len + cfg.data.passage_max_len * (1 + cfg.data.num_negatives)
    t0, real_tokens = time.perf_counter(), 0
    compiled = set()
    try:
        for step in range(run.start + 1, num_steps + 1):
            batch = global_batch(next(run.data_iter), fns.batch_shardings)
            program = fns.step_for(step - 1)
            if program not in compiled:  # seconds on the quickstart, minutes on a real model: say why we wait
                writer.message(f"step {step}: compiling the train step"
                               + (" (gradual quantization: its warmup program)" if program is fns.warmup_step else ""))
                compiled.add(program)
            run.state, metrics = program(run.state, batch, *run.teacher_args)
            metrics = jax.device_get(metrics)
            real_tokens += int(metrics.pop("tokens"))
            _check_finite(metrics, step, ckpt)
            writer.advance()
            if step % cfg.train.log_every == 0 or step == num_steps:
                dt = time.perf_counter() - t0
                n = cfg.train.log_every if step % cfg.train.log_every == 0 else step % cfg.train.log_every
                metrics.update(pairs_per_s=n * cfg.train.batch_size / dt, tokens_per_s=real_tokens / dt,
                               padded_tokens_per_s=n * cfg.train.batch_size * tokens_per_pair / dt)
                writer.write(step, metrics)
                t0, real_tokens = time.perf_counter(), 0
            stop = any_process(interrupts.requested is not None)  # every host stops at the same step
            # the last step is always saved: the run's end state is resumable if num_steps grows later
            ckpt.save(step, run.state, run.data_iter.get_state, force=stop or step == num_steps)
            if stop:
                writer.message(f"{interrupts.requested or 'a signal on another host'}: saved step {step}, "
                               f"stopping; rerun the same command to resume")
                ckpt.close()
                return False
    except BaseException:
        ckpt.abandon()
        raise
    else:
        ckpt.close()  # the final async save's failure surfaces here, as a CheckpointSaveError
    finally:
        interrupts.restore()
        writer.close()
    return True


def host_params(params):
    """The model's parameters as numpy on every process (a collective when they span several hosts)."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def finish(run: Run) -> str:
    """Write the final model folder once (process 0), after every process holds the final state."""
    cfg, workdir = run.cfg, run.workdir
    final = nnx.merge(run.graphdef, host_params(run.state["params"]["model"]))
    out = paths.join(workdir, "model")
    error = None
    if jax.process_index() == 0:
        try:
            save_model_dir(out, final, run.mcfg, tokenizer_dir=cfg.init.model, overwrite=True,
                           extra={"prompts": {"query": query_prefix(cfg)}, "started_from": run.started_from,
                                  "train": {"steps": int(cfg.train.num_steps), "stage": cfg.stage},
                                  "precisions": sorted({p for p, w in cfg.loss.precisions.items() if w > 0}),
                                  "matryoshka_dims": sorted({int(d) for d in cfg.loss.matryoshka_dims})})
            print(f"done: model folder {out}; metrics {paths.join(workdir, 'metrics.jsonl')}; "
                  f"TensorBoard {paths.join(workdir, 'tensorboard')}")
        except Exception as e:  # noqa: BLE001 - re-raised by agree, on every process
            error = e
    agree(error, "writing the final model folder")  # the others wait here until process 0 has written it
    return out
