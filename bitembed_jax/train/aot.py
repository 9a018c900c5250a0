"""``bitembed-jax aot``: compile the real train step for a TPU topology on a CPU-only machine.

No parameter is allocated: the model, optimizer state and batch are abstract
shapes with the real shardings; ``jax.experimental.topologies`` describes the
pod and XLA's TPU compiler (libtpu) reports per-chip memory and FLOPs.
"""
import importlib.util
import re

import jax
from flax import nnx

from bitembed_jax.io.model_dir import abstract_model
from bitembed_jax.parallel.mesh import make_mesh
from bitembed_jax.train.build import build_step, for_platform, student_config, teacher_config
from bitembed_jax.train.config_checks import uses_teacher, validate_config
from bitembed_jax.train.step import BATCH_KEYS, with_shardings

GIB = 1024 ** 3
# per-chip HBM and peak bf16 FLOP/s of the TPU generations users rent
CHIPS = {
    "v4": (32 * GIB, 275e12),
    "v5e": (16 * GIB, 197e12),
    "v5p": (95 * GIB, 459e12),
    "v6e": (32 * GIB, 918e12),
}


def chip_of(topology: str) -> str:
    gen = topology.split(":")[0].split("-")[0].lower()
    if gen not in CHIPS:
        raise ValueError(f"--topology {topology}: unknown TPU generation {gen!r}; known: {sorted(CHIPS)}")
    return gen


def abstract_batch(cfg, shardings):
    b, lq, lp, k = (int(cfg.train.batch_size), int(cfg.data.query_max_len), int(cfg.data.passage_max_len),
                    int(cfg.data.num_negatives))
    shapes = {"query_ids": (b, lq), "query_mask": (b, lq), "passage_ids": (b, lp), "passage_mask": (b, lp),
              "negative_ids": (b, k, lp), "negative_mask": (b, k, lp)}
    return {key: jax.ShapeDtypeStruct(shapes[key], jax.numpy.int32, sharding=shardings[key])
            for key in BATCH_KEYS if key in shardings}


def compile_programs(cfg, devices):
    """([compiled train step, compiled warmup step if gradual quantization is on], model config): the step
    with the teacher for fine-tuning configs, lowered and compiled for ``devices``."""
    lowered, mcfg = lower_programs(cfg, devices)
    return [p.compile() for p in lowered], mcfg


def lower_programs(cfg, devices):
    """``compile_programs`` before XLA compiles: the programs lowered for ``devices``, and the model config."""
    if uses_teacher(cfg) and not cfg.teacher.model:
        # only the teacher's architecture matters here, and it is the student's (in fp)
        cfg = cfg.copy_and_resolve_references()
        cfg.teacher.model = cfg.init.model
    validate_config(cfg, len(devices), check_paths=False)
    mesh = make_mesh(cfg.mesh, devices)
    mcfg = student_config(cfg, for_platform(devices))
    graphdef, abs_state = nnx.split(abstract_model(mcfg))
    if uses_teacher(cfg):
        t_graphdef, t_state = nnx.split(abstract_model(teacher_config(mcfg)))
        fns = build_step(cfg, graphdef, abs_state, mesh, teacher=(t_graphdef, t_state))
        t_abs = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(t_state))
        extra = (with_shardings(t_abs, fns.teacher_shardings),)
    else:
        fns = build_step(cfg, graphdef, abs_state, mesh)
        extra = ()
    state = with_shardings(fns.abstract_state, fns.state_shardings)
    batch = abstract_batch(cfg, fns.batch_shardings)
    programs = [fns.step] + ([fns.warmup_step] if fns.warmup_step is not None else [])
    return [p.lower(state, batch, *extra) for p in programs], mcfg


def compile_step(cfg, devices):
    """The compiled train step for ``devices``. Gradual quantization runs another program first (fake-quantized
    float matmuls instead of integer codes); the pod has to hold both, so the larger by memory is returned."""
    compiled, mcfg = compile_programs(cfg, devices)
    return max(compiled, key=lambda c: total_bytes(c.memory_analysis())), mcfg


def total_bytes(mem) -> int:
    """Per-chip bytes a compiled program needs: arguments, temporaries, outputs not aliased, code."""
    return (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
            - getattr(mem, "alias_size_in_bytes", 0) + getattr(mem, "generated_code_size_in_bytes", 0))


def model_flops_per_step(mcfg, cfg) -> float:
    """Training FLOPs of one global step counted from the shapes, as MFU is defined (2 per multiply-add).

    Per token and layer: the q/k/v/o and MLP matmuls, plus attention scores and values over the token's whole
    padded sequence (no sliding-window discount: an upper bound for Gemma3). Backward = 2x forward; GradCache
    (num_chunks > 1) runs the forward once more, and fine-tuning adds the teacher's forward. Recomputation
    under remat is not model work and is left out. XLA's own count is no substitute: its cost analysis visits
    a loop body once, so a chunked (scanned) step would be under-counted by about the number of chunks.
    """
    d, heads = mcfg.head_dim, mcfg.num_heads
    linear = mcfg.hidden_size * (heads + 2 * mcfg.num_kv_heads) * d + heads * d * mcfg.hidden_size \
        + 3 * mcfg.hidden_size * mcfg.intermediate_size
    bs = int(cfg.train.batch_size)
    sequences = [(bs, int(cfg.data.query_max_len)),
                 (bs * (1 + int(cfg.data.num_negatives)), int(cfg.data.passage_max_len))]
    forward = sum(2.0 * n * t * mcfg.num_layers * (linear + 2 * t * heads * d) for n, t in sequences)
    passes = 3 + (1 if int(cfg.loss.num_chunks) > 1 else 0)
    return passes * forward + (forward if uses_teacher(cfg) else 0.0)


def integer_matmuls(compiled) -> int:
    """Matmuls of the compiled program that accumulate in int32: the int8 x int8 code products
    (``code_matmul="int8"``; XLA's TPU backend writes a dot as a ``convolution``)."""
    return len(re.findall(r"= s32\[[^\]]*\]\S* (?:dot|convolution)\(", compiled.as_text()))


def report(compiled, topology: str, num_chips: int, step_time_s: float | None = None,
           model_flops: float | None = None, code_matmul: str | None = None) -> dict:
    """Per-chip memory and FLOPs; MFU (at ``step_time_s``) from ``model_flops`` (the whole step's)."""
    hbm, peak = CHIPS[chip_of(topology)]
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    args, temp, out = mem.argument_size_in_bytes, mem.temp_size_in_bytes, mem.output_size_in_bytes
    alias = getattr(mem, "alias_size_in_bytes", 0)
    total = total_bytes(mem)
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    r = {"topology": topology, "chips": num_chips, "argument_gib": args / GIB, "temp_gib": temp / GIB,
         "output_gib": out / GIB, "alias_gib": alias / GIB, "total_gib": total / GIB, "hbm_gib": hbm / GIB,
         "fits": total <= hbm, "flops_per_chip": flops, "code_matmul": code_matmul,
         "int32_matmuls": integer_matmuls(compiled)}
    if model_flops:
        r["model_flops_per_chip"] = model_flops / num_chips
        if step_time_s:
            r["mfu"] = r["model_flops_per_chip"] / step_time_s / peak
            r["step_time_s"] = step_time_s
        r["min_step_time_s"] = r["model_flops_per_chip"] / peak  # at 100% of the chip's bf16 peak
    return r


# chips whose two TensorCores jax drives as one device ("megacore"); meshes need one device per chip
MEGACORE = ("v4", "v5p")


LIBTPU_HINT = ('AOT compilation for TPUs needs libtpu, which this install lacks: pip install -e ".[tpu]" in the '
               'checkout (or pip install "jax[tpu]")')


class LibtpuMissing(RuntimeError):
    """The CPU install has no libtpu (the ``tpu`` extra); the message says how to install it."""


def topology_devices(topology: str):
    from jax.experimental import topologies

    kw = {"chip_config_name": "megacore"} if chip_of(topology) in MEGACORE else {}
    if importlib.util.find_spec("libtpu") is None:
        raise LibtpuMissing(f"--topology {topology}: {LIBTPU_HINT}")
    try:
        return topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw).devices
    except jax.errors.JaxRuntimeError as e:  # libtpu answered: it refuses this topology, and says why
        raise ValueError(f"--topology {topology}: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:  # libtpu is there, but jax could not load it
        raise LibtpuMissing(f"--topology {topology}: {str(e).splitlines()[0]}; {LIBTPU_HINT}") from None


def format_report(r: dict) -> str:
    lines = [f"topology {r['topology']} ({r['chips']} chips), per chip:",
             f"  arguments   {r['argument_gib']:8.2f} GiB",
             f"  temporaries {r['temp_gib']:8.2f} GiB",
             f"  outputs     {r['output_gib']:8.2f} GiB (aliased with arguments: {r['alias_gib']:.2f} GiB)",
             f"  total       {r['total_gib']:8.2f} GiB of {r['hbm_gib']:.0f} GiB HBM -> "
             + ("fits" if r["fits"] else "DOES NOT FIT"),
             f"  FLOPs/step  {r['flops_per_chip']:.3e} per chip by XLA's cost analysis (a loop body, such as "
             "a GradCache chunk, counted once)"]
    if r.get("code_matmul"):
        lines.append(f"  integer-code matmuls: {r['code_matmul']} operands ({r['int32_matmuls']} int8 x int8 -> int32 "
                     "matmuls in the program)")
    if "model_flops_per_chip" in r:
        lines.append(f"  model FLOPs/step {r['model_flops_per_chip']:.3e} per chip from the shapes: at least "
                     f"{r['min_step_time_s']:.3g} s per step at the chip's bf16 peak")
    if "mfu" in r:
        lines.append(f"  MFU at {r['step_time_s']} s per step: {100 * r['mfu']:.3g}%")
    return "\n".join(lines)
