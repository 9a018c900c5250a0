"""optax AdamW with warmup + cosine/linear/constant decay, global-norm clipping, and frozen parameters."""
import re

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


def param_path(path) -> str:
    """``model.embed_tokens.embedding``: the dotted name ``train.freeze`` patterns are matched against."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def frozen_mask(params, patterns):
    """True for every parameter whose dotted path matches one of the ``train.freeze`` regexes."""
    regs = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(lambda path, _: any(r.search(param_path(path)) for r in regs), params)


def check_freeze(params, patterns):
    """Each pattern must name some parameter, and something must stay trainable."""
    names = [param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for p in patterns:
        if not any(re.search(p, n) for n in names):
            raise ValueError(f"config.train.freeze: {p!r} matches no parameter (names look like {names[0]!r})")
    if all(jax.tree.leaves(frozen_mask(params, patterns))):
        raise ValueError(f"config.train.freeze={list(patterns)} freezes every parameter: nothing would train")


def make_optimizer(t):
    sched = learning_rate_schedule(t)
    tx = optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip and t.grad_clip > 0 else optax.identity(),
        optax.adamw(sched, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=_decay_mask),
    )
    freeze = list(t.get("freeze", []))
    if freeze:  # frozen parameters get no update and no optimizer moments
        tx = optax.multi_transform(
            {"train": tx, "frozen": optax.set_to_zero()},
            lambda params: jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(params, freeze)))
    return tx, sched
