"""Checks of a training config, cheap and before anything is loaded, compiled or trained; each error names
its config key. ``train`` and ``aot`` run the same checks."""
import os
import re

from bitembed_jax.choices import INIT_CHOICES, PRECISIONS, TRAINING_STAGES
from bitembed_jax.convert.fp_to_bitnet import converts
from bitembed_jax.io import paths
from bitembed_jax.parallel.mesh import mesh_shape
from bitembed_jax.train.tiny_backbone import tiny_arch


def check_folder(key: str, path: str):
    if paths.is_remote(path):
        if not paths.exists(path):
            raise FileNotFoundError(f"config.{key}={path!r} not found")
    elif not os.path.isdir(path):
        raise FileNotFoundError(f"config.{key}={path!r} is not a local folder")


def validate_config(cfg, num_devices: int, num_processes: int = 1, check_paths: bool = True):
    """Cheap checks before anything is compiled or trained; each error names its config key."""
    _check_init(cfg, check_paths)
    chunks = _check_batch(cfg, num_devices, num_processes)
    _check_loss(cfg)
    _check_teacher(cfg, chunks, check_paths)
    _check_data(cfg)
    _check_train(cfg)


def _check_init(cfg, check_paths: bool):
    for key, choices in INIT_CHOICES.items():
        if cfg.init[key] not in choices:
            raise ValueError(f"config.init.{key}={cfg.init[key]!r} is not one of {', '.join(map(str, choices))}")
    if check_paths:
        if not cfg.init.model:
            raise ValueError("config.init.model is empty: give a local HF folder or a bitembed-jax model folder "
                             "(or tiny:qwen3 for the quickstart's tiny random backbone)")
        if tiny_arch(cfg.init.model) is None:
            check_folder("init.model", cfg.init.model)
        if not cfg.data.train_files:
            _check_prepared_without_files(cfg)
        for f in cfg.data.train_files:
            if not any(c in f for c in "*?[") and not paths.exists(f):  # globs: stream mode expands them
                raise FileNotFoundError(f"config.data.train_files: {f} not found")
            if not paths.is_remote(f) and os.path.isdir(f):
                raise ValueError(f"config.data.train_files: {f} is a folder; give JSONL or Parquet files")
        ds = cfg.data.dataset_dir
        if ds and not paths.is_remote(ds) and os.path.exists(ds) and not os.path.isdir(ds):
            raise ValueError(f"config.data.dataset_dir: {ds} is a file; give the folder the dataset is built in")


def _check_prepared_without_files(cfg):
    """With no training files, config.data.dataset_dir must hold a prepared dataset (checked before any weight
    is read)."""
    if not (cfg.data.dataset_dir and cfg.data.get("mode", "prepared") == "prepared"):
        raise ValueError("config.data.train_files is empty (give files, or a prepared dataset as "
                         "config.data.dataset_dir)")
    from bitembed_jax.data.prepared import is_prepared

    if not is_prepared(cfg.data.dataset_dir):
        raise FileNotFoundError(f"config.data.dataset_dir: no prepared dataset in {cfg.data.dataset_dir} (no "
                                "metadata.json) and config.data.train_files is empty")


def _check_batch(cfg, num_devices: int, num_processes: int) -> int:
    """The batch against the mesh, the hosts and GradCache's chunks; returns the number of chunks."""
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
    return chunks


def _check_loss(cfg):
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


def _check_teacher(cfg, chunks: int, check_paths: bool):
    if uses_teacher(cfg):
        if not cfg.teacher.model:
            raise ValueError("config.teacher.model is empty but distillation weights are set "
                             "(give --teacher HF_OR_MODEL_DIR, or set config.distill.*_weight=0)")
        if check_paths:
            check_folder("teacher.model", cfg.teacher.model)
        if chunks > 1:
            raise ValueError("config.loss.num_chunks must be 1 when distilling: the teacher runs in the same step")


DATA_MODES = ("prepared", "stream")


def _check_data(cfg):
    max_neg, val = int(cfg.data.get("max_negatives", -1)), float(cfg.data.get("validation_fraction", 0.0))
    if max_neg < -1:
        raise ValueError(f"config.data.max_negatives={max_neg} must be >= 0, or -1 for all")
    if 0 <= max_neg < cfg.data.num_negatives:
        raise ValueError(f"config.data.num_negatives={cfg.data.num_negatives} hard negatives per pair cannot come "
                         f"from records cut to config.data.max_negatives={max_neg}")
    if not 0.0 <= val < 1.0:
        raise ValueError(f"config.data.validation_fraction={val} must be in [0, 1)")
    mode = cfg.data.get("mode", "prepared")
    if mode not in DATA_MODES:
        raise ValueError(f"config.data.mode={mode!r} is not one of {', '.join(DATA_MODES)}")
    if int(cfg.data.get("shuffle_window", 1)) < 1:
        raise ValueError(f"config.data.shuffle_window={cfg.data.shuffle_window} must be >= 1 (1: no shuffle)")


def _check_train(cfg):
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


def check_teacher_fits(cfg, student_cfg, teacher_cfg):
    """The teacher is fp, has the student's vocabulary and, for vector alignment, its width: checked on the two
    configs before any weight is read or the dataset is built (``build.read_teacher_config``)."""
    path = cfg.teacher.model
    if teacher_cfg.mode != "fp":
        raise ValueError(f"config.teacher.model={path!r} holds a {teacher_cfg.mode!r} model; the teacher must be fp")
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise ValueError(f"config.teacher.model: vocabulary {teacher_cfg.vocab_size} != the student's "
                         f"{student_cfg.vocab_size}; teacher and student must share the tokenizer")
    aligned = [k for k in ("embed_weight", "hidden_weight") if cfg.distill[k] > 0]
    if aligned and teacher_cfg.hidden_size != student_cfg.hidden_size:
        raise ValueError(f"config.distill.{aligned[0]}: the teacher's hidden size {teacher_cfg.hidden_size} != the "
                         f"student's {student_cfg.hidden_size}; vector alignment needs equal widths")


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
