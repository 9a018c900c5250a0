"""Distillation ablation on the shipped sample pairs: does fine-tuning with the fp teacher help the BitNet student?

    python bench/distill_ablation.py                  # 1 seed, ~5 minutes on 2 CPU cores
    python bench/distill_ablation.py --seeds 0 1 2    # 3 seeds, ~16 minutes on busy shared cores

Tiny experiment, not a quality claim. Steps:

1. split the 240 sample pairs (bitembed_jax/data/sample/pairs.jsonl) into train / held-out by a fixed seed;
2. make a tiny random Qwen3 (hidden 128, 4 layers; BPE tokenizer trained on the train split's texts) and train
   it in fp with the contrastive loss on the train split (quickstart.py, 120 steps at lr 3e-4): the teacher;
3. the BitNet student starts from the teacher's weights (ternary weights, int8 activations, per-linear norms
   inserted at 1), then runs the pretrain stage (configs/quickstart.py: contrastive, fp32 output);
4. from that one pretrain checkpoint, the fine-tune stage (configs/quickstart_finetune.py: multi-precision +
   Matryoshka contrastive) with the same budget under four settings: contrastive only (distill weights 0),
   + similarity-distribution distillation, + attention-relation distillation, + both (the config's default);
5. every model is scored on the held-out pairs as retrieval: queries = held-out queries with the model's query
   prompt, corpus = all 240 positive passages (the 192 train passages are distractors), one relevant passage
   per query. nDCG@10 / MRR@10 from ``eval.local.retrieval_scores`` (pytrec_eval); Recall@1 = the share of
   queries whose positive scores highest (ties split: a tie of n counts 1/n), from ``quant.embedding.similarity``
   on the same stored vectors.

Each seed changes the data order of pretrain and fine-tune (data.seed) and re-runs both; the split, the teacher
and the student's starting point stay fixed. Prints markdown tables (per seed and the mean over seeds).
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SAMPLE = os.path.join(ROOT, "bitembed_jax", "data", "sample", "pairs.jsonl")
CONFIGS = os.path.join(ROOT, "configs")
MODEL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             intermediate_size=384)
SETTINGS = {  # name -> (sim_weight, attn_weight)
    "contrastive only": (0.0, 0.0),
    "+ similarity distill": (1.0, 0.0),
    "+ attention relation": (0.0, 1.0),
    "+ both": (1.0, 1.0),
}
PRECISIONS = ("fp32", "int8", "int4", "int2", "binary")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="data-order seeds of pretrain + fine-tune")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=48, help="held-out pairs (the rest train)")
    p.add_argument("--teacher-steps", type=int, default=120)
    p.add_argument("--teacher-lr", type=float, default=3e-4)
    p.add_argument("--pretrain-steps", type=int, default=60, help="quickstart.py's num_steps by default")
    p.add_argument("--finetune-steps", type=int, default=40, help="quickstart_finetune.py's num_steps by default")
    p.add_argument("--workdir", default=None, help="keep runs here (default: a temporary folder, removed)")
    return p.parse_args(argv)


def split_pairs(seed: int, heldout: int):
    import numpy as np

    with open(SAMPLE, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    order = np.random.default_rng(seed).permutation(len(rows))
    return rows, [rows[i] for i in order[heldout:]], [rows[i] for i in order[:heldout]]


def write_jsonl(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def run_train(config_file, overrides, workdir, log):
    """``train`` with a config file + overrides; its console output goes to ``log``."""
    import jax

    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train.loop import train

    cfg = apply_overrides(load_config_file(os.path.join(CONFIGS, config_file)),
                          ["--config.checkpoint.async_save=False", "--config.mesh.data=1", *overrides])
    cfg.checkpoint.every_steps = int(cfg.train.num_steps)  # one checkpoint, at the end
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        out = train(cfg, workdir, devices=jax.devices()[:1])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last = json.loads(f.readlines()[-1])
    return out, last


def bitnet_from_fp(fp_dir, out_dir):
    """The student's start: the fp model's weights in a bitnet model (inserted per-linear norms at 1)."""
    import jax.numpy as jnp
    from flax import nnx

    from bitembed_jax.io.model_dir import abstract_model, read_config, save_model_dir

    from bitembed_jax.io.load import load_model_dir
    from bitembed_jax.io.state_paths import fill_state, flat_params

    fp_model, fp_cfg = load_model_dir(fp_dir)
    _, meta = read_config(fp_dir)
    cfg = fp_cfg.replace(mode="bitnet", norm="per_linear", act_bits=8)
    graphdef, abs_state = nnx.split(abstract_model(cfg))
    fp_values = flat_params(nnx.state(fp_model))
    values = {}
    for path, leaf in flat_params(abs_state).items():
        if path in fp_values:
            values[path] = fp_values[path]
        elif path.endswith(".norm.weight"):
            values[path] = jnp.ones(leaf.shape, leaf.dtype)
        else:
            raise KeyError(f"no fp weight for {path}")
    model = nnx.merge(graphdef, fill_state(abs_state, values))
    return save_model_dir(out_dir, model, cfg, tokenizer_dir=fp_dir, extra={"prompts": meta.get("prompts", {})})


def evaluate(model_dir, queries, corpus, relevant, precisions=("fp32",)):
    """{precision: {ndcg_at_10, mrr_at_10, recall_at_1}} on held-out queries vs the corpus."""
    import numpy as np

    from bitembed_jax.encode import Encoder
    from bitembed_jax.eval.local import embed_texts, retrieval_scores
    from bitembed_jax.quant.storage import model_storage, similarity

    enc = Encoder.from_pretrained(model_dir)
    docs = embed_texts(enc, corpus, batch_size=32)
    qs = embed_texts(enc, queries, batch_size=32, prompt=enc.prompts.get("query", ""))
    qids = [f"q{i}" for i in range(len(queries))]
    dids = [f"d{i}" for i in range(len(corpus))]
    qrels = {q: {dids[d]: 1} for q, d in zip(qids, relevant)}
    out = {}
    for p in precisions:
        sq, sd = model_storage(qs, p, enc.meta), model_storage(docs, p, enc.meta)
        scores = retrieval_scores(sq, sd, qids, dids, qrels)
        sims = similarity(sq, sd)
        pos = sims[np.arange(len(relevant)), relevant]
        best = sims.max(axis=1)
        ties = (sims == best[:, None]).sum(axis=1)
        r1 = float(np.mean(np.where(pos >= best, 1.0 / ties, 0.0)))
        out[p] = {"ndcg_at_10": scores["ndcg_at_10"], "mrr_at_10": scores["mrr_at_10"], "recall_at_1": r1}
    return out


def fmt_row(name, m, extra=""):
    return f"| {name} | {m['ndcg_at_10']:.3f} | {m['mrr_at_10']:.3f} | {m['recall_at_1']:.3f} |{extra}"


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    import jax
    import numpy as np

    from bitembed_jax.testing.tiny_hf import make_tiny_hf

    t_start = time.perf_counter()
    own_tmp = args.workdir is None
    wd = tempfile.mkdtemp(prefix="distill_ablation-") if own_tmp else os.path.abspath(args.workdir)
    os.makedirs(wd, exist_ok=True)
    log = os.path.join(wd, "train.log")
    try:
        rows, train_rows, held = split_pairs(args.split_seed, args.heldout)
        train_file = write_jsonl(train_rows, os.path.join(wd, "train.jsonl"))
        corpus = [r["positive"] for r in rows]
        index = {id(r): i for i, r in enumerate(rows)}
        queries, relevant = [r["query"] for r in held], [index[id(r)] for r in held]
        data = [f"--config.data.train_files=['{train_file}']"]

        hf_dir = os.path.join(wd, "tiny_hf")
        texts = [t for r in train_rows for t in (r["query"], r["positive"], *r.get("negatives", []))]
        make_tiny_hf("qwen3", hf_dir, texts=texts, vocab_size=512, **MODEL)

        def step(msg):
            print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

        step("teacher: fp, contrastive")
        teacher, t_last = run_train("quickstart.py", [f"--config.init.model={hf_dir}", "--config.init.mode=fp",
                                                      f"--config.train.num_steps={args.teacher_steps}",
                                                      f"--config.train.learning_rate={args.teacher_lr}", *data],
                                    os.path.join(wd, "teacher"), log)
        student0 = bitnet_from_fp(teacher, os.path.join(wd, "student_init"))
        # the teacher and the student's start are shared by every seed
        teacher_scores = evaluate(teacher, queries, corpus, relevant)["fp32"]
        init_scores = evaluate(student0, queries, corpus, relevant)["fp32"]
        results = {"teacher (fp)": {s: teacher_scores for s in args.seeds},
                   "student init (bitnet, no training)": {s: init_scores for s in args.seeds}}
        finals, all_prec = {}, {}
        for seed in args.seeds:
            seed_kw = [f"--config.data.seed={seed}", f"--config.train.seed={seed}", *data]
            step(f"seed {seed}: student pretrain (bitnet, contrastive)")
            pre, _ = run_train("quickstart.py", [f"--config.init.model={student0}",
                                                 f"--config.train.num_steps={args.pretrain_steps}", *seed_kw],
                               os.path.join(wd, f"seed{seed}", "pretrain"), log)
            results.setdefault("student after pretrain", {})[seed] = evaluate(pre, queries, corpus, relevant)["fp32"]
            for name, (sim_w, attn_w) in SETTINGS.items():
                step(f"seed {seed}: fine-tune, {name}")
                tag = name.strip("+ ").replace(" ", "_")
                out, last = run_train("quickstart_finetune.py", [
                    f"--config.init.model={pre}", f"--config.teacher.model={teacher}",
                    f"--config.distill.sim_weight={sim_w}", f"--config.distill.attn_weight={attn_w}",
                    f"--config.train.num_steps={args.finetune_steps}", *seed_kw],
                    os.path.join(wd, f"seed{seed}", f"finetune_{tag}"), log)
                prec = PRECISIONS if name == "+ both" else ("fp32",)
                scores = evaluate(out, queries, corpus, relevant, prec)
                results.setdefault(f"fine-tune: {name}", {})[seed] = scores["fp32"]
                finals.setdefault(name, {})[seed] = last
                if name == "+ both":
                    all_prec[seed] = scores
        step("done")

        print(f"\n{len(train_rows)} train / {len(held)} held-out pairs (split seed {args.split_seed}); corpus "
              f"{len(corpus)} passages; qwen3 hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, "
              f"vocab 512; steps: teacher {args.teacher_steps} (lr {args.teacher_lr:g}), "
              f"pretrain {args.pretrain_steps}, fine-tune "
              f"{args.finetune_steps}; seeds {args.seeds}; jax {jax.__version__}; "
              f"{time.perf_counter() - t_start:.0f} s; load average {os.getloadavg()[0]:.1f}")
        metrics = ("ndcg_at_10", "mrr_at_10", "recall_at_1")
        for seed in args.seeds:
            print(f"\nseed {seed}, fp32 output:\n")
            print("| model | nDCG@10 | MRR@10 | Recall@1 |\n|---|---:|---:|---:|")
            for name, by_seed in results.items():
                print(fmt_row(name, by_seed[seed]))
        if len(args.seeds) > 1:
            print(f"\nmean (min-max) over seeds {args.seeds}, fp32 output:\n")
            print("| model | nDCG@10 | MRR@10 | Recall@1 |\n|---|---:|---:|---:|")
            for name, by_seed in results.items():
                cells = []
                for k in metrics:
                    v = [by_seed[s][k] for s in args.seeds]
                    cells.append(f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})")
                print(f"| {name} | " + " | ".join(cells) + " |")
        print("\nfine-tune: final training loss terms (last logged step):\n")
        print("| setting | seed | loss | contrastive | sim_distill | attn_distill |\n|---|---:|---:|---:|---:|---:|")
        for name, by_seed in finals.items():
            for seed, m in by_seed.items():
                m = {"contrastive": m["loss"], **m}  # without a teacher the loss is the contrastive term
                keys = ("loss", "contrastive", "sim_distill", "attn_distill")
                cells = [f"{m[k]:.3f}" if k in m else "-" for k in keys]
                print(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        print("\nfine-tune + both, every output precision" + (" (mean over seeds)" if len(args.seeds) > 1 else "")
              + ":\n")
        print("| precision | nDCG@10 | MRR@10 | Recall@1 |\n|---|---:|---:|---:|")
        for p in PRECISIONS:
            mean = {k: float(np.mean([all_prec[s][p][k] for s in args.seeds])) for k in metrics}
            print(fmt_row(p, mean))
    finally:
        if own_tmp:
            shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
