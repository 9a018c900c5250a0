"""Base config: every key a run can set. Model × stage files override it (big_vision style)."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.stage = "pretrain"  # pretrain | finetune

    # where the student comes from: a local HF folder (converted on the fly) or one of our model folders
    c.init = ml_collections.ConfigDict()
    c.init.model = ""
    c.init.mode = "bitnet"  # fp | bitnet
    c.init.norm = "per_linear"  # per_linear | subln | none
    c.init.act_bits = 8
    c.init.attention = "causal"
    c.init.pooling = "last"

    c.data = ml_collections.ConfigDict()
    c.data.train_files = []  # JSONL / Parquet of {"query", "positive", "negatives"?}
    # a prepared dataset (read in place by every host: local, a shared mount, gs://), or where to build one
    # (default: WORKDIR/dataset); train_files may be empty when it holds a prepared dataset
    c.data.dataset_dir = ""
    c.data.mode = "prepared"  # or "stream": read train_files directly, each host its slice, no build
    c.data.shuffle_window = 10_000  # stream mode: records shuffled together per host (1: file order)
    c.data.query_max_len = 64
    c.data.passage_max_len = 256
    c.data.num_negatives = 0
    c.data.query_instruction = "Given a web search query, retrieve relevant passages that answer the query"
    c.data.skip_bad = False
    c.data.max_negatives = -1  # keep at most this many hard negatives per record when building (-1: all)
    c.data.validation_fraction = 0.0  # records held out of training into the dataset's 'validation' split
    c.data.seed = 0

    c.loss = ml_collections.ConfigDict()
    c.loss.temperature = 0.02
    c.loss.learnable_temperature = False
    c.loss.symmetric = False
    c.loss.num_chunks = 1  # GradCache chunks per step (1 = no chunking)
    # score local queries in blocks of this many (recomputed in backward): per-device loss memory grows
    # linearly with the global batch instead of quadratically; 0 = one block
    c.loss.query_block = 0
    # output-vector precisions trained jointly (weight per precision): fp32 int8 int4 int2 binary
    c.loss.precisions = ml_collections.ConfigDict({"fp32": 1.0, "int8": 0.0, "int4": 0.0, "int2": 0.0, "binary": 0.0})
    c.loss.matryoshka_dims = [0]  # 0 = the full dimension; e.g. [0, 512, 256, 128]

    # fine-tuning: the frozen full-precision teacher and the distillation terms
    c.teacher = ml_collections.ConfigDict()
    c.teacher.model = ""  # local HF folder or one of our fp model folders
    c.distill = ml_collections.ConfigDict()
    c.distill.sim_weight = 0.0  # alpha: similarity-distribution KL
    c.distill.attn_weight = 0.0  # beta: attention-relation KL
    c.distill.embed_weight = 0.0  # 1 - cos(student, teacher) of the pooled vectors (equal widths)
    c.distill.hidden_weight = 0.0  # standardized MSE of every layer's output on real tokens, layers evenly mapped
    c.distill.tau_student = 0.02
    c.distill.tau_teacher = 0.02
    c.distill.relation_heads = 8
    c.distill.student_layer = -1
    c.distill.teacher_layer = -1

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # global, across all hosts and devices
    c.train.num_steps = 1000
    c.train.learning_rate = 1e-4
    c.train.warmup_steps = 100
    c.train.schedule = "cosine"  # cosine | linear | constant
    c.train.end_lr_ratio = 0.0
    c.train.weight_decay = 0.01
    c.train.b1 = 0.9
    c.train.b2 = 0.98
    c.train.grad_clip = 1.0
    c.train.dtype = "float32"  # compute dtype; parameters stay float32 (master weights)
    c.train.remat = False
    # gradual quantization: blend the BitNet conversion (inserted norms, ternary weights, low-bit activations)
    # in linearly over this many steps, from the fp model at step 1 (quant/warmup.py); 0 = all at once
    c.train.quant_warmup_steps = 0
    # regexes over dotted parameter paths that stay fixed (no gradient, no optimizer state),
    # e.g. ["embed_tokens"] keeps the full-precision token embeddings as imported
    c.train.freeze = []
    c.train.seed = 0
    c.train.log_every = 10

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: the remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.num_slices = 1  # multi-slice: the data axis spans slices over DCN
    return c
