"""Encoder forward throughput: our jitted JAX model vs transformers' PyTorch model, same weights and batch.

    python bench/forward.py                      # qwen3 + gemma3, fp + bitnet, batch 32 x seq 128
    python bench/forward.py --arch gemma3 --batch 8 --seq 512 --reps 20

Both sides get the same CPU cores (process affinity) and thread count. The PyTorch
bitnet model is what a user would write in eager mode: each block linear replaced
by a module doing RMSNorm + absmax int8 activation + absmean ternary weight
fake-quantization on every call, matching our default bitnet config (per_linear norm).
Prints a markdown table (sequences per second, best of the timed repetitions) and the
load average, since other processes on the machine skew CPU timings.
"""
import argparse
import os
import tempfile
import time

# small configs: the size a 2-core CPU benchmarks in seconds; gemma3's window < seq so local layers are local
SIZES = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             intermediate_size=768)
ARCH_KW = {"qwen3": {}, "gemma3": dict(sliding_window=64, query_pre_attn_scalar=64)}
VOCAB = 2048
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["qwen3", "gemma3", "all"], default="all")
    p.add_argument("--mode", choices=["fp", "bitnet", "all"], default="all")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=10, help="timed repetitions (after --warmup untimed ones)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="CPU cores for both frameworks")
    return p.parse_args(argv)


def torch_bitlinear_cls():
    import torch  # imported late: main() restricts the CPU cores first

    class BitLinear(torch.nn.Module):
        def __init__(self, linear, eps):
            super().__init__()
            self.weight = linear.weight
            self.norm_weight = torch.nn.Parameter(torch.ones(linear.in_features))  # inserted norms start at 1
            self.eps = eps

        def forward(self, x):
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight
            s = 127 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
            x = (x * s).round().clamp(-128, 127) / s
            gamma = self.weight.abs().mean() + 1e-5
            w = (self.weight / gamma).round().clamp(-1, 1) * gamma
            return torch.nn.functional.linear(x, w)

    return BitLinear


def to_bitnet_torch(model, eps):
    bitlinear = torch_bitlinear_cls()
    for layer in model.layers:
        for proj in PROJ:
            block = layer.self_attn if proj in PROJ[:4] else layer.mlp
            setattr(block, proj, bitlinear(getattr(block, proj), eps))
    return model


def time_both(fns, warmup, reps):
    """Best seconds per call of each fn. Calls alternate, so load from other processes hits both alike, and
    the fastest repetition is the one least disturbed by it (this bench runs on shared CPUs)."""
    for _ in range(warmup):  # the first JAX call compiles
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def bench_one(arch, mode, args):
    import jax
    import numpy as np
    import torch
    from flax import nnx
    from transformers import AutoModel

    from bitembed_jax.convert.hf_import import import_hf
    from bitembed_jax.testing.tiny_hf import hf_config

    torch.manual_seed(0)
    hf_cfg = hf_config(arch, VOCAB, **SIZES, **ARCH_KW[arch], max_position_embeddings=max(512, args.seq))
    with tempfile.TemporaryDirectory() as d:
        # both sides load the same saved weights; sdpa is transformers' default attention
        AutoModel.from_config(hf_cfg).save_pretrained(d)
        ref = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
        model, cfg = import_hf(d, mode=mode)
    if mode == "bitnet":
        ref = to_bitnet_torch(ref, cfg.rms_norm_eps)

    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, size=(args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m).last_hidden_state)
    j_ids, j_mask = jax.device_put(ids), jax.device_put(mask)
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def run_torch():
        with torch.no_grad():
            return ref(input_ids=t_ids, attention_mask=t_mask).last_hidden_state

    t_jax, t_torch = time_both([lambda: fwd(state, j_ids, j_mask).block_until_ready(), run_torch],
                               args.warmup, args.reps)
    # shows both sides compute the same thing: fp agrees to ~1e-5; in bitnet a float-order difference flips
    # an activation rounding now and then, and attention spreads it (~1e-1 on these random weights)
    diff = float(np.abs(np.asarray(fwd(state, j_ids, j_mask)) - run_torch().numpy()).max())
    return args.batch / t_jax, args.batch / t_torch, diff


def main(argv=None):
    args = parse_args(argv)
    # both frameworks get only these cores; set before jax/torch start their thread pools
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    import jax
    import torch
    torch.set_num_threads(args.threads)

    archs = ["qwen3", "gemma3"] if args.arch == "all" else [args.arch]
    modes = ["fp", "bitnet"] if args.mode == "all" else [args.mode]
    print(f"batch {args.batch} x seq {args.seq}, {args.threads} threads, best of {args.reps} reps, "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| arch | mode | JAX seq/s | PyTorch seq/s | JAX / PyTorch | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in archs:
        for mode in modes:
            j, t, diff = bench_one(arch, mode, args)
            print(f"| {arch} | {mode} | {j:.1f} | {t:.1f} | {j / t:.2f}x | {diff:.1e} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
