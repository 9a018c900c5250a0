"""Distillation objectives (method.md sections 5 and 6). The teacher never receives a gradient."""
import jax
import jax.numpy as jnp

from bitembed_jax.losses.contrastive import candidate_scores, shard_over_batch


def _kl_rows(teacher_logits, student_logits):
    """KL(softmax(teacher) || softmax(student)) along the last axis."""
    log_t = jax.nn.log_softmax(teacher_logits, axis=-1)
    log_s = jax.nn.log_softmax(student_logits, axis=-1)
    return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)


def similarity_distill(student_scores, teacher_scores, *, tau_student, tau_teacher, valid=None, axis_names=None):
    """mean over queries of KL(softmax(T/tau_teacher) || softmax(S/tau_student)).

    Scores: raw cosines (b, pool) over the same candidate pool, e.g. from
    ``candidate_scores(..., temperature=1.0)``. ``valid``: optional (b,) mask of
    queries to count. Inside shard_map pass ``axis_names``: the mean is over the
    global batch and identical on every device.
    """
    t = jax.lax.stop_gradient(teacher_scores).astype(jnp.float32) / tau_teacher
    s = student_scores.astype(jnp.float32) / tau_student
    kl = _kl_rows(t, s)
    w = jnp.ones_like(kl) if valid is None else valid.astype(jnp.float32)
    total, count = jnp.sum(kl * w), jnp.sum(w)
    if axis_names:
        total, count = jax.lax.psum((total, count), axis_names)
    return total / jnp.maximum(count, 1.0)


def sharded_similarity_distill(mesh, sq, sp, sn, tq, tp, tn, *, tau_student, tau_teacher, valid=None):
    """similarity_distill on the global candidate pool, batch split over the rules table's batch axes.

    s*/t*: student/teacher query, positive and (optional, (b, k, d)) hard-negative
    embeddings; teacher and student widths may differ.
    """
    def local(sq, sp, sn, tq, tp, tn, valid, ts, tt, *, axis_names):
        s, _ = candidate_scores(sq, sp, sn, 1.0, axis_names)
        t, _ = candidate_scores(tq, tp, tn, 1.0, axis_names)
        return similarity_distill(s, t, tau_student=ts, tau_teacher=tt, valid=valid, axis_names=axis_names)

    taus = (jnp.asarray(tau_student, jnp.float32), jnp.asarray(tau_teacher, jnp.float32))
    return shard_over_batch(mesh, local, (sq, sp, sn, tq, tp, tn, valid), taus)


def _relation_logits(x, mask, num_heads):
    """(B, T, H, D) -> masked relation logits (B, R, T, T) over key tokens, in float32."""
    b, t, h, d = x.shape
    if (h * d) % num_heads:
        raise ValueError(f"attention relation: H*D = {h}*{d} = {h * d} is not divisible by "
                         f"num_relation_heads={num_heads}")
    d_r = h * d // num_heads
    # zero padded tokens first: garbage there (even inf/nan) can then not leak into real rows or gradients
    x = jnp.where(mask[:, :, None, None], x.astype(jnp.float32), 0.0)
    a = x.reshape(b, t, num_heads, d_r).transpose(0, 2, 1, 3)
    logits = a @ a.transpose(0, 1, 3, 2) / jnp.sqrt(jnp.float32(d_r))
    return jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)


def attention_relation_distill(student_qkv, teacher_qkv, mask, *, num_relation_heads):
    """MiniLM-v2 Q-Q, K-K, V-V relation KL(teacher || student), mean over relations, heads and real tokens.

    *_qkv: (q, k, v), each (B, T, H, D) with K/V already repeated to the query
    heads; teacher and student H*D may differ (each splits into
    ``num_relation_heads`` heads of its own size). mask: (B, T), true for real tokens.
    """
    if len(student_qkv) != 3 or len(teacher_qkv) != 3:
        raise ValueError("attention relation: expected (q, k, v) tuples for student and teacher")
    mask = mask.astype(bool)
    real = mask.astype(jnp.float32)[:, None, :]  # (B, 1, T): weight of each query token
    count = jnp.maximum(jnp.sum(real), 1.0) * num_relation_heads
    losses = []
    for s, t in zip(student_qkv, teacher_qkv):
        kl = _kl_rows(_relation_logits(jax.lax.stop_gradient(t), mask, num_relation_heads),
                      _relation_logits(s, mask, num_relation_heads))  # (B, R, T)
        losses.append(jnp.sum(kl * real) / count)
    return sum(losses) / 3.0


def cosine_distill(student, teacher, weights=None):
    """Weighted mean over rows of 1 - cos(student, teacher) along the last axis.

    Pooled vectors (B, d) or per-token hidden states (B, T, d) with ``weights``
    (B, T) marking real tokens. Both sides must have the same width. Cosine, not
    MSE: it ignores the overall scale, which differs between a fp teacher and a
    BitNet student with extra norms (and Gemma3's residual stream runs in the
    hundreds).
    """
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(f"cosine distillation: student width {student.shape[-1]} != teacher width "
                         f"{teacher.shape[-1]}")
    s = student.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    eps = jnp.finfo(jnp.float32).tiny
    cos = jnp.sum(s * t, -1) * jax.lax.rsqrt(jnp.maximum(jnp.sum(s * s, -1) * jnp.sum(t * t, -1), eps))
    w = jnp.ones_like(cos) if weights is None else weights.astype(jnp.float32)
    return jnp.sum((1.0 - cos) * w) / jnp.maximum(jnp.sum(w), 1.0)


def layer_map(num_student: int, num_teacher: int) -> list[int]:
    """The teacher layer each student layer copies: evenly spaced, last onto last."""
    return [-(-(i + 1) * num_teacher // num_student) - 1 for i in range(num_student)]  # ceil


def standardized_mse(student, teacher, mask, rel_eps: float = 1e-4):
    """Mean over real tokens and features of ((student - teacher) / sd)^2, sd per feature over the teacher's
    real tokens of the batch (TinyBERT-style hidden-state MSE, standardized).

    Standardized because an LLM's residual stream has a few massive feature dimensions (Gemma3's run in the
    hundreds): a raw MSE or a cosine is all theirs and says little about the rest. ``rel_eps`` x the median
    variance (not the mean, which the massive features own) keeps near-constant features from dividing by
    ~0. Inside jit the batch statistics cover the global batch, however it is sharded.
    """
    t = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    w = mask.astype(jnp.float32)[..., None]
    n = jnp.maximum(jnp.sum(w), 1.0)
    mu = jnp.sum(t * w, axis=(0, 1)) / n
    var = jnp.sum(jnp.square(t - mu) * w, axis=(0, 1)) / n
    inv = jax.lax.rsqrt(var + rel_eps * jnp.median(var) + jnp.finfo(jnp.float32).tiny)
    d = (student.astype(jnp.float32) - t) * inv
    return jnp.sum(jnp.square(d) * w) / (n * t.shape[-1])


def hidden_state_distill(student_hidden, teacher_hidden, mask):
    """Per-layer hidden-state alignment: mean over student layers of ``standardized_mse`` on real tokens,
    each student layer against the teacher layer ``layer_map`` gives it."""
    mapping = layer_map(len(student_hidden), len(teacher_hidden))
    return sum(standardized_mse(s, teacher_hidden[j], mask) for s, j in zip(student_hidden, mapping)) / len(mapping)
