"""Per-device memory of the cross-device contrastive loss as the global batch grows (compile only, no run).

    python bench/loss_memory.py                       # global batch 1024 -> 65536 on 8 host CPU devices
    python bench/loss_memory.py --dim 768 --negatives 0 --max-batch 16384

Compiles on abstract, batch-sharded shapes (mesh data=N) and reads
``compiled.memory_analysis()`` (temp + argument + output bytes, per device):

- loss+grad: sharded InfoNCE and its gradient wrt the embeddings. Each device
  scores its local queries against the gathered global pool: (B/N) x B scores,
  quadratic in B at a fixed device count.
- blocked: the same with ``query_block``: rematerialised blocks of local queries,
  (block x B) scores alive at a time: linear in B.
- grad_cache: a full GradCache step (blocked loss) with an MLP standing in for
  the encoder (per-token MLP + mean pool), a fixed number of rows per chunk, and
  gradients wrt its parameters.
- no chunks: that step without GradCache (all encoder activations kept).
Prints a markdown table; "x" columns are the ratio to the previous batch (2 = linear, 4 = quadratic).
"""
import argparse
import os


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8, help="host CPU devices (XLA_FLAGS), all on the data axis")
    p.add_argument("--min-batch", type=int, default=1024)
    p.add_argument("--max-batch", type=int, default=65536)
    p.add_argument("--dim", type=int, default=1024, help="embedding width")
    p.add_argument("--negatives", type=int, default=1, help="hard negatives per query")
    p.add_argument("--query-block", type=int, default=128, help="local queries scored at a time (blocked columns)")
    p.add_argument("--tokens", type=int, default=16, help="stand-in encoder tokens per row")
    p.add_argument("--mlp-in", type=int, default=128, help="stand-in encoder input width per token")
    p.add_argument("--mlp-hidden", type=int, default=1024, help="stand-in encoder hidden width")
    p.add_argument("--chunk-rows", type=int, default=1024, help="global rows per GradCache chunk")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from bitembed_jax.losses.contrastive import sharded_info_nce
    from bitembed_jax.parallel.sharding import MESH_AXES, logical_spec
    from bitembed_jax.train.grad_cache import grad_cache_step

    n_dev = jax.device_count()
    mesh = jax.make_mesh((n_dev, 1, 1), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    k, tau = args.negatives, 0.05

    def abstract(shape, names):
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, logical_spec(names)))

    def mib(fn, *abstract_args):
        m = jax.jit(fn).lower(*abstract_args).compile().memory_analysis()
        return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20

    def loss_grad(block):
        def fn(q, p, n):
            return jax.value_and_grad(lambda *e: sharded_info_nce(
                mesh, *e, temperature=tau, query_block=block)[0], argnums=(0, 1, 2) if k else (0, 1))(q, p, n)
        return fn

    def embed_fn(params, x):  # per-token MLP + mean pool: like an encoder, activations >> embedding per row
        return jnp.mean(jnp.tanh(x @ params["w1"]) @ params["w2"], axis=1)

    def step_loss(q, p, n):
        negs = None if n is None else n.reshape(q.shape[0], k, q.shape[1])
        return sharded_info_nce(mesh, q, p, negs, temperature=tau, query_block=args.query_block)

    def grad_cache(chunks):
        return lambda prm, q, p, n: grad_cache_step(embed_fn, prm, q, p, n, step_loss, chunks)[2]

    def unchunked(prm, q, p, n):
        return jax.grad(lambda w: step_loss(embed_fn(w, q), embed_fn(w, p),
                                            None if n is None else embed_fn(w, n))[0])(prm)

    repl = NamedSharding(mesh, PartitionSpec())
    params = {"w1": jax.ShapeDtypeStruct((args.mlp_in, args.mlp_hidden), jnp.float32, sharding=repl),
              "w2": jax.ShapeDtypeStruct((args.mlp_hidden, args.dim), jnp.float32, sharding=repl)}

    cols = ["loss+grad", "blocked", "grad_cache", "no chunks"]
    print(f"Per-device MiB (temp + argument + output) on {n_dev} {jax.devices()[0].platform} devices, "
          f"mesh data={n_dev}; "
          f"d={args.dim}, {k} hard negative(s), query_block={args.query_block}, "
          f"stand-in encoder: {args.tokens} tokens x MLP {args.mlp_in}->{args.mlp_hidden}->{args.dim} + mean pool, "
          f"{args.chunk_rows} global rows per chunk.\n")
    print("| global batch | local batch | chunks | " + " | ".join(f"{c} MiB | x" for c in cols) + " |")
    print("|" + "---:|" * (3 + 2 * len(cols)))
    prev, b = None, args.min_batch
    while b <= args.max_batch:
        emb = [abstract((b, args.dim), ("batch", None))] * 2
        emb.append(abstract((b, k, args.dim), ("batch", None, None)) if k else None)
        inp = [abstract((b, args.tokens, args.mlp_in), ("batch", None, None))] * 2
        inp.append(abstract((b * k, args.tokens, args.mlp_in), ("batch", None, None)) if k else None)
        chunks = max(1, b // args.chunk_rows)
        row = [mib(loss_grad(None), *emb), mib(loss_grad(args.query_block), *emb),
               mib(grad_cache(chunks), params, *inp), mib(unchunked, params, *inp)]
        ratios = [f"{r / p:.2f}" if prev else "" for r, p in zip(row, prev or row)]
        cells = " | ".join(f"{r:,.1f} | {x}" for r, x in zip(row, ratios))
        print(f"| {b:,} | {b // n_dev:,} | {chunks} | {cells} |", flush=True)
        prev, b = row, b * 2


if __name__ == "__main__":
    main()
