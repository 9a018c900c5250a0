"""What a training config builds: the student, the teacher and the train step. ``train`` builds them with
weights; ``aot`` builds the same from shapes alone (``student_config``, ``teacher_config``), so both compile
one program."""
import json
import os

from bitembed_jax.choices import INT8_PLATFORMS
from bitembed_jax.convert.fp_to_bitnet import bitnet_config, converts, fp_to_bitnet
from bitembed_jax.convert.hf_config import from_hf_config
from bitembed_jax.convert.hf_import import import_hf, read_hf_config
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.io.model_dir import CONFIG_NAME, read_config
from bitembed_jax.models.presets import PRESETS
from bitembed_jax.train.config_checks import check_init_model, check_teacher_fits, uses_teacher
from bitembed_jax.train.finetune import finetune_loss_and_grads
from bitembed_jax.train.optimizer import make_optimizer
from bitembed_jax.train.step import make_train_step
from bitembed_jax.train.tiny_backbone import tiny_arch, tiny_hf_config


def for_platform(devices) -> str:
    """The integer-code matmul for these devices: int8 where the matrix units run it faster than bf16 (TPU,
    GPU), bf16 elsewhere (XLA's CPU int8 dot is slow). Both give the same exact sums."""
    return "int8" if devices and devices[0].platform in INT8_PLATFORMS else "bfloat16"


def _encoder_opts(cfg, code_matmul: str) -> dict:
    init = cfg.init
    return dict(mode=init.mode, norm=init.norm, act_bits=init.act_bits, attention=init.attention,
                pooling=init.pooling, dtype=cfg.train.dtype, remat=cfg.train.remat, code_matmul=code_matmul)


def student_config(cfg, code_matmul: str = "bfloat16"):
    """The student's ModelConfig from config.init.model (one of our folders, a local HF folder, a preset
    name when it is a known HF id, or a tiny backbone), without reading a weight."""
    path, init = cfg.init.model, cfg.init
    opts = _encoder_opts(cfg, code_matmul)
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        mcfg, _ = read_config(path)
        check_init_model(init, mcfg, path)
        if converts(mcfg, init):  # an fp folder becoming a BitNet student
            mcfg = bitnet_config(mcfg, init)
        return mcfg.replace(dtype=cfg.train.dtype, remat=cfg.train.remat, code_matmul=code_matmul)
    if os.path.exists(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            return from_hf_config(json.load(f), os.path.join(path, "config.json"), **opts)
    if path in PRESETS:
        return from_hf_config(dict(PRESETS[path]), f"preset {path}", **opts)
    if tiny_arch(path):
        return from_hf_config(tiny_hf_config(tiny_arch(path)), f"tiny backbone {path}", **opts)
    raise ValueError(f"config.init.model={path!r}: not a local folder and not one of the presets {sorted(PRESETS)}")


def load_student(cfg, code_matmul: str = "bfloat16"):
    """(model, ModelConfig) from one of our model folders or a local HF folder (converted on the fly)."""
    path, init = cfg.init.model, cfg.init
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        check_init_model(init, read_config(path)[0], path)  # before any weight is read
        model, mcfg = load_model_dir(path, dtype=cfg.train.dtype, remat=cfg.train.remat, code_matmul=code_matmul)
        if converts(mcfg, init):  # e.g. a student started from the fp teacher
            return fp_to_bitnet(model, mcfg, init)
        return model, mcfg
    return import_hf(path, **_encoder_opts(cfg, code_matmul))


def teacher_config(student_cfg):
    """The teacher's shapes for ``aot``: the fp model of the student's architecture."""
    return student_cfg.replace(mode="fp")


def read_teacher_config(cfg):
    """The teacher's ModelConfig from config.teacher.model (one of our folders or an HF folder, imported in fp),
    without reading a weight."""
    path = cfg.teacher.model
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        return read_config(path)[0]
    hf, cfg_path = read_hf_config(path)
    return from_hf_config(hf, cfg_path, mode="fp", attention=cfg.init.attention, pooling=cfg.init.pooling,
                          dtype=cfg.train.dtype)


def load_teacher(cfg, student_cfg):
    """The frozen full-precision teacher (HF folder imported in fp mode, or one of our fp model folders)."""
    path = cfg.teacher.model
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        model, tcfg = load_model_dir(path, dtype=cfg.train.dtype)
    else:
        model, tcfg = import_hf(path, mode="fp", attention=cfg.init.attention, pooling=cfg.init.pooling,
                                dtype=cfg.train.dtype)
    check_teacher_fits(cfg, student_cfg, tcfg)
    return model


def build_step(cfg, graphdef, model_state, mesh, *, teacher=None, loss_and_grads=None):
    """The step functions (``step.StepFns``) of a config: the optimizer, the loss (distillation when the config
    uses a teacher; ``teacher`` is then its (graphdef, state), abstract or not) and the shardings."""
    tx, schedule = make_optimizer(cfg.train)
    if uses_teacher(cfg):
        if teacher is None:
            raise ValueError("config.distill weights are set: the step needs the teacher")
        loss_and_grads = loss_and_grads or finetune_loss_and_grads
    else:
        teacher = None
    return make_train_step(cfg, graphdef, model_state, mesh, tx, schedule, loss_and_grads=loss_and_grads,
                           teacher=teacher)
