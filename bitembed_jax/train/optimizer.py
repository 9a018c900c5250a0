"""optax AdamW with warmup + cosine/linear/constant decay and global-norm clipping."""
import jax
import optax


def learning_rate_schedule(t) -> optax.Schedule:
    peak, warm, total = t.learning_rate, int(t.warmup_steps), int(t.num_steps)
    end = peak * t.end_lr_ratio
    decay_steps = max(total - warm, 1)
    if t.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=t.end_lr_ratio)
    elif t.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif t.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"train.schedule={t.schedule!r} must be cosine, linear or constant")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def _decay_mask(params):
    """Decay matrices only: norms, biases and the temperature are left alone."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(t):
    sched = learning_rate_schedule(t)
    tx = optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip and t.grad_clip > 0 else optax.identity(),
        optax.adamw(sched, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=_decay_mask),
    )
    return tx, sched
