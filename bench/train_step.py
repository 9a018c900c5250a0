"""Train-step throughput: our jitted BitNet train step vs the PyTorch eager BitNet model a user would write.

    python bench/train_step.py                       # batch 32 pairs, query 32 / passage 128 tokens
    python bench/train_step.py --batch 16 --plen 256 --steps 10 --mode bitnet
    python bench/train_step.py --mode bitnet --profile /tmp/prof   # + XLA's per-op time table of the JAX step

One step = embed the queries and passages, InfoNCE over in-batch negatives, backward, global-norm clip
and AdamW update. JAX runs the real ``make_train_step`` (the contrastive loss of ``train``, one CPU
device, mesh data=1, float32 or --dtype bfloat16). PyTorch runs transformers' Qwen3 model with the same config and
the same saved weights; in ``bitnet`` mode every linear of the layers is replaced by the straight-through BitLinear of
the BitNet b1.58 training recipe (per-linear RMSNorm, absmax int8 activations, absmean ternary weights,
``x + (q(x) - x).detach()``), with last-token pooling, the same loss, clipping and torch.optim.AdamW (decay on
matrices only, as ours). ``fp`` runs both models unquantized, for context.

Steps alternate between the two frameworks so load from other processes hits both alike, with a pause
before each (``--pause``): the worker threads of either framework keep spinning for a while after a step
(OpenMP up to 200 ms) and would take the cores from the other's next step (without the pause the JAX bitnet
step measured 0.87 s instead of 0.68 s). Prints a markdown table: steps/s and pairs/s from the median step
time, the ratio, the ratio of the best (least disturbed) step times, and both first-step losses (same
weights and batch, so they should agree: fp to ~1e-5, bitnet only to ~1e-2, because the activation
rounding amplifies float-order differences: a 1e-6 relative change of the embeddings moves the last hidden
states by ~2%).
"""
import argparse
import os
import statistics
import tempfile
import time

SIZES = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             intermediate_size=768)
VOCAB = 2048
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# shared training hyper-parameters (configs/base.py defaults, fixed temperature)
LR, BETAS, WD, CLIP, TEMPERATURE = 1e-4, (0.9, 0.98), 0.01, 1.0, 0.02


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32, help="query/passage pairs per step")
    p.add_argument("--qlen", type=int, default=32, help="query tokens (padded length)")
    p.add_argument("--plen", type=int, default=128, help="passage tokens (padded length)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per framework (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mode", choices=["fp", "bitnet", "all"], default="all")
    p.add_argument("--threads", type=int, default=2, help="CPU cores for both frameworks")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype; bfloat16 = our train.dtype with fp32 master weights vs torch.autocast")
    p.add_argument("--profile", metavar="DIR", help="also trace two JAX steps into DIR/MODE and print the "
                   "per-op time table")
    p.add_argument("--pause", type=float, default=0.3,
                   help="seconds before each timed step, so the other framework's worker threads (OpenMP spins "
                        "up to 200 ms after a parallel region) are idle when the clock starts")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- PyTorch side

def torch_bitlinear_cls():
    import torch

    def activation_quant(x):
        scale = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
        return (x * scale).round().clamp_(-128, 127) / scale

    def weight_quant(w):
        gamma = w.abs().mean() + 1e-5
        return (w / gamma).round().clamp_(-1, 1) * gamma

    class BitLinear(torch.nn.Module):
        """The BitNet b1.58 training BitLinear: RMSNorm, then fake-quantize with straight-through grads."""

        def __init__(self, linear, eps):
            super().__init__()
            self.weight = linear.weight
            self.norm_weight = torch.nn.Parameter(torch.ones(linear.in_features))  # as our inserted norms
            self.eps = eps

        def forward(self, x):
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight
            x = x + (activation_quant(x) - x).detach()
            w = self.weight + (weight_quant(self.weight) - self.weight).detach()
            return torch.nn.functional.linear(x, w)

    return BitLinear


def torch_trainer(path, mode, eps, dtype="float32"):
    """A closure running one PyTorch train step on (q_ids, q_mask, p_ids, p_mask) tensors; returns the loss."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    if mode == "bitnet":
        bitlinear = torch_bitlinear_cls()
        for layer in model.layers:
            for proj in PROJ:
                block = layer.self_attn if proj in PROJ[:4] else layer.mlp
                setattr(block, proj, bitlinear(getattr(block, proj), eps))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": WD},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=LR, betas=BETAS)

    def embed(ids, mask):
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1  # right padding: the last real token
        return F.normalize(h[torch.arange(h.shape[0]), last], dim=-1)

    def step(q_ids, q_mask, p_ids, p_mask):
        opt.zero_grad(set_to_none=True)
        # bf16: autocast, the PyTorch way to mixed precision (fp32 master weights, as our train.dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            q, p = embed(q_ids, q_mask), embed(p_ids, p_mask)
        loss = F.cross_entropy(q.float() @ p.float().T / TEMPERATURE, torch.arange(q.shape[0]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss.item()

    return step


# ----------------------------------------------------------------------------- JAX side

def jax_trainer(path, mode, args):
    """The real train step of ``bitembed-jax train`` (contrastive loss, AdamW), on one CPU device."""
    import jax
    from flax import nnx

    from bitembed_jax.convert.hf_import import import_hf
    from bitembed_jax.parallel.mesh import make_mesh
    from bitembed_jax.train.optimizer import make_optimizer
    from bitembed_jax.train.step import make_train_step
    from configs import base

    cfg = base.get_config()
    cfg.mesh.data = 1
    cfg.train.batch_size = args.batch
    cfg.train.dtype = args.dtype
    cfg.train.learning_rate, (cfg.train.b1, cfg.train.b2) = LR, BETAS
    cfg.train.weight_decay, cfg.train.grad_clip = WD, CLIP
    cfg.loss.temperature = TEMPERATURE
    cfg.data.query_max_len, cfg.data.passage_max_len = args.qlen, args.plen
    model, mcfg = import_hf(path, mode=mode, dtype=args.dtype)
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    graphdef, model_state = nnx.split(model)
    tx, schedule = make_optimizer(cfg.train)
    fns = make_train_step(cfg, graphdef, model_state, mesh, tx, schedule)
    box = {"state": fns.init(nnx.to_pure_dict(model_state))}

    def place(batch):
        return {k: jax.device_put(v, fns.batch_shardings[k]) for k, v in batch.items()}

    def step(batch):
        box["state"], metrics = fns.step(box["state"], batch)  # the state is donated: keep the new one
        return float(metrics["loss"])  # waits for the step

    step.hlo = lambda batch: fns.step.lower(box["state"], batch).compile().as_text()
    return step, place, mcfg.rms_norm_eps


# ----------------------------------------------------------------------------- the benchmark

def make_batch(args, seed=0):
    """Random token ids, right-padded to the full lengths with random real lengths (>= half the width)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def side(n, width):
        ids = rng.integers(3, VOCAB, size=(n, width)).astype(np.int32)
        lens = rng.integers(width // 2, width + 1, size=n)
        mask = (np.arange(width)[None] < lens[:, None]).astype(np.int32)
        return ids * mask, mask

    q_ids, q_mask = side(args.batch, args.qlen)
    p_ids, p_mask = side(args.batch, args.plen)
    return {"query_ids": q_ids, "query_mask": q_mask, "passage_ids": p_ids, "passage_mask": p_mask}


def op_profile(trace_dir, run_step, hlo_text, steps=2, top=25):
    """Trace ``steps`` JAX steps and print XLA's per-op thunk time per step, grouped by fusion kind and the
    JAX operation it came from (the op_name metadata of the compiled HLO)."""
    import collections
    import glob
    import gzip
    import json
    import re

    import jax

    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(steps):
        run_step()
    jax.profiler.stop_trace()
    op_names = dict(re.findall(r'^\s+%(\S+) = .*?op_name="([^"]*)"', hlo_text, re.M))
    trace = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/perfetto_trace.json.gz")))[-1]
    with gzip.open(trace) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in op_names:
            kind = re.sub(r"[.]\d+$", "", e["name"])  # fusion kind without its instance number
            per_op[f"{kind} | {op_names[e['name']]}"] += e["dur"] / 1e3 / steps
    print(f"\nJAX per-op time, ms per step ({sum(per_op.values()):.0f} ms of thunks; trace in {trace_dir}):")
    for name, ms in per_op.most_common(top):
        print(f"{ms:8.1f}  {name}")


def bench_mode(mode, args):
    import torch
    from transformers import AutoModel

    from bitembed_jax.testing.tiny_hf import hf_config

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        AutoModel.from_config(hf_config("qwen3", VOCAB, **SIZES, max_position_embeddings=512)).save_pretrained(d)
        j_step, place, eps = jax_trainer(d, mode, args)
        t_step = torch_trainer(d, mode, eps, args.dtype)
    batch = make_batch(args)
    j_batch = place(batch)
    keys = ("query_ids", "query_mask", "passage_ids", "passage_mask")
    t_batch = [torch.tensor(batch[k], dtype=torch.long) for k in keys]
    fns = [lambda: j_step(j_batch), lambda: t_step(*t_batch)]
    first = [fn() for fn in fns]  # same weights, same batch: the first losses agree; JAX compiles here
    for _ in range(args.warmup - 1):
        for fn in fns:
            fn()
    times = [[], []]
    for _ in range(args.steps):
        for fn, ts in zip(fns, times):
            time.sleep(args.pause)
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    if args.profile:
        op_profile(os.path.join(args.profile, mode), lambda: j_step(j_batch), j_step.hlo(j_batch))
    med = [statistics.median(ts) for ts in times]
    best = [min(ts) for ts in times]
    spread = ", ".join(f"{n} {min(ts):.2f}/{statistics.median(ts):.2f}/{max(ts):.2f}"
                       for n, ts in zip(("JAX", "PyTorch"), times))
    return med, best, first, f"{mode}: step seconds min/median/max: {spread}"


def main(argv=None):
    args = parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])  # before the thread pools start
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # configs/
    import jax
    import torch
    from transformers.utils import logging as hf_logging
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()

    modes = ["bitnet", "fp"] if args.mode == "all" else [args.mode]
    print(f"qwen3 hidden {SIZES['hidden_size']}, {SIZES['num_hidden_layers']} layers, "
          f"{SIZES['num_attention_heads']}/{SIZES['num_key_value_heads']} heads x {SIZES['head_dim']}, "
          f"intermediate {SIZES['intermediate_size']}, vocab {VOCAB}; batch {args.batch} pairs, query {args.qlen} / "
          f"passage {args.plen} tokens; {args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps; "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| mode | JAX steps/s | PyTorch steps/s | JAX pairs/s | PyTorch pairs/s | JAX / PyTorch (median) "
          "| JAX / PyTorch (best) | first loss JAX | first loss PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    spreads = []
    for mode in modes:
        (mj, mt), (bj, bt), (lj, lt), spread = bench_mode(mode, args)
        spreads.append(spread)
        print(f"| {mode} | {1 / mj:.2f} | {1 / mt:.2f} | {args.batch / mj:.1f} | {args.batch / mt:.1f} "
              f"| {mt / mj:.2f}x | {bt / bj:.2f}x | {lj:.5f} | {lt:.5f} |", flush=True)
    print("\n" + "\n".join(spreads))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
