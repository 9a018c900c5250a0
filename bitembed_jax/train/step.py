"""The jitted train step: embed queries/passages/negatives, contrastive loss across the mesh, AdamW update.

``train`` and ``aot`` build the step through ``make_train_step`` so the compiled
program is the same. State is a plain pytree {params, opt_state, step}; params
hold the model's parameters as a pure dict and, when learnable, the log inverse
temperature.
"""
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bitembed_jax.losses.contrastive import sharded_info_nce
from bitembed_jax.models import pool
from bitembed_jax.parallel.sharding import logical_sharding, state_shardings
from bitembed_jax.quant.embedding import matryoshka, quantize_ste
from bitembed_jax.quant.warmup import mix_at, set_quant_mix
from bitembed_jax.train.finite import all_finite
from bitembed_jax.train.grad_cache import grad_cache_step
from bitembed_jax.train.optimizer import check_freeze, frozen_mask

BATCH_KEYS = ("query_ids", "query_mask", "passage_ids", "passage_mask", "negative_ids", "negative_mask")


class StepFns(NamedTuple):
    init: Callable  # (model params pure dict) -> train state, placed on the mesh
    step: Callable  # jitted (state, batch) -> (state, metrics)
    state_shardings: Any
    batch_shardings: dict
    abstract_state: Any
    teacher_shardings: Any = None  # the step's third argument when a teacher is used
    # gradual quantization: the program for the first ``quant_warmup_steps`` steps (a blended forward)
    warmup_step: Optional[Callable] = None
    quant_warmup_steps: int = 0

    def step_for(self, completed: int) -> Callable:
        """The jitted step to run after ``completed`` steps."""
        return self.warmup_step if completed < self.quant_warmup_steps else self.step


def merge_model(graphdef, model_params, quant_mix=None):
    """The model from its params; in a gradual-quantization warmup step, with its conversion blended in."""
    model = nnx.merge(graphdef, model_params)
    if quant_mix is not None:
        set_quant_mix(model, quant_mix)
    return model


def make_embed_fn(graphdef, pooling: str, quant_mix=None):
    def embed_fn(model_params, inputs):
        ids, mask = inputs
        out = merge_model(graphdef, model_params, quant_mix)(ids, mask)
        return pool(out.last_hidden_state, mask, pooling)
    return embed_fn


def temperature_of(params, loss_cfg):
    if loss_cfg.learnable_temperature:
        return jnp.exp(-params["log_inv_temperature"])
    return jnp.asarray(loss_cfg.temperature, jnp.float32)


def split_inputs(batch):
    """(query, passage, negatives) as (ids, mask) pairs; negatives flattened to (b*k, L)."""
    q = (batch["query_ids"], batch["query_mask"])
    p = (batch["passage_ids"], batch["passage_mask"])
    n = None
    if "negative_ids" in batch:
        b, k, length = batch["negative_ids"].shape
        n = (batch["negative_ids"].reshape(b * k, length), batch["negative_mask"].reshape(b * k, length))
    return q, p, n


def precision_terms(loss_cfg):
    """[(matryoshka dim or 0, precision, weight)] with non-zero weight; the first is the reported one."""
    terms = [(int(d), p, float(w)) for d in loss_cfg.matryoshka_dims for p, w in loss_cfg.precisions.items() if w]
    return sorted(terms, key=lambda t: (t[0] != 0, t[1] != "fp32"))


def multi_precision_info_nce(mesh, q, p, negs, *, temperature, loss_cfg):
    """Weighted sum of InfoNCE over output precisions x Matryoshka dims (straight-through quantizers)."""
    total, metrics = 0.0, {}
    for dim, prec, w in precision_terms(loss_cfg):
        def view(e):
            e = e if dim == 0 else matryoshka(e, dim)
            return e if prec == "fp32" else quantize_ste(e, prec)
        loss, aux = sharded_info_nce(mesh, view(q), view(p), None if negs is None else view(negs),
                                     temperature=temperature, symmetric=loss_cfg.symmetric,
                                     query_block=int(loss_cfg.query_block) or None)
        total = total + w * loss
        name = prec if dim == 0 else f"{prec}@{dim}"
        metrics[f"loss_{name}"] = loss
        metrics.setdefault("accuracy", aux["accuracy"])
    return total, metrics


def contrastive_loss_and_grads(params, batch, *, graphdef, mesh, cfg, model_shardings=None, quant_mix=None):
    """(loss, metrics, grads) for one global batch; GradCache chunking when cfg.loss.num_chunks > 1."""
    embed_fn = make_embed_fn(graphdef, cfg.init.pooling, quant_mix)
    q_in, p_in, n_in = split_inputs(batch)
    k = batch["negative_ids"].shape[1] if n_in is not None else 0

    def loss_on_embeddings(q, p, n, temperature):
        negs = None if n is None else n.reshape(-1, k, n.shape[-1])
        return multi_precision_info_nce(mesh, q, p, negs, temperature=temperature, loss_cfg=cfg.loss)

    if cfg.loss.num_chunks > 1:
        temp = temperature_of(params, cfg.loss)  # fixed: config validation forbids learnable + chunks
        loss, aux, grads = grad_cache_step(
            embed_fn, params["model"], q_in, p_in, n_in,
            lambda q, p, n: loss_on_embeddings(q, p, n, temp), cfg.loss.num_chunks, param_shardings=model_shardings)
        return loss, aux, {"model": grads}

    def full_loss(prm):
        q = embed_fn(prm["model"], q_in)
        p = embed_fn(prm["model"], p_in)
        n = None if n_in is None else embed_fn(prm["model"], n_in)
        return loss_on_embeddings(q, p, n, temperature_of(prm, cfg.loss))

    (loss, aux), grads = jax.value_and_grad(full_loss, has_aux=True)(params)
    return loss, aux, grads


def with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying ``shardings``: restore targets and AOT inputs, no memory allocated."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def batch_shardings(mesh, has_negatives: bool):
    sh = {k: logical_sharding(mesh, ("batch", "length")) for k in BATCH_KEYS[:4]}
    if has_negatives:
        sh.update({k: logical_sharding(mesh, ("batch", None, "length")) for k in BATCH_KEYS[4:]})
    return sh


def make_train_step(cfg, graphdef, abstract_model_state, mesh, tx, schedule, *, loss_and_grads=None,
                    teacher=None) -> StepFns:
    """``abstract_model_state``: the model's nnx.State (abstract is fine: only shapes and axis names are read).

    ``teacher``: (graphdef, abstract state) of a frozen model; the step then takes its params (sharded by
    the same rules, never donated, no optimizer state) as a third argument.
    """
    loss_and_grads = loss_and_grads or contrastive_loss_and_grads
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params_sh = {"model": state_shardings(abstract_model_state, mesh)}
    if cfg.loss.learnable_temperature:
        params_sh["log_inv_temperature"] = repl

    def init_fn(model_params):
        params = {"model": model_params}
        if cfg.loss.learnable_temperature:
            params["log_inv_temperature"] = -jnp.log(jnp.asarray(cfg.loss.temperature, jnp.float32))
        return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

    abs_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                              nnx.to_pure_dict(abstract_model_state))
    freeze = list(cfg.train.get("freeze", []))
    if freeze:
        check_freeze({"model": abs_params}, freeze)
    abs_state = jax.eval_shape(init_fn, abs_params)
    if freeze:
        frozen = frozen_mask(abs_state["params"], freeze)
    # optimizer moments follow their parameters' sharding; counters are replicated
    # (frozen parameters have no moments: optax marks their place with an empty MaskedNode)
    masked = optax.transforms.MaskedNode
    opt_sh = optax.tree_map_params(tx, lambda v, s: v if isinstance(v, masked) else s, abs_state["opt_state"],
                                   params_sh, transform_non_params=lambda _: repl,
                                   is_leaf=lambda x: isinstance(x, (jax.sharding.NamedSharding, masked)))
    state_sh = {"params": params_sh, "opt_state": opt_sh, "step": repl}
    init = jax.jit(init_fn, out_shardings=state_sh)

    warmup = int(cfg.train.quant_warmup_steps)

    def step_fn(state, batch, teacher_params=None, *, blended=False):
        kw = {} if teacher is None else {"teacher_params": teacher_params, "teacher_graphdef": teacher[0]}
        if blended:
            kw["quant_mix"] = mix_at(state["step"], warmup)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the models' activation constraints use it
            loss, aux, grads = loss_and_grads(state["params"], batch, graphdef=graphdef, mesh=mesh, cfg=cfg,
                                              model_shardings=params_sh["model"], **kw)
        if freeze:  # unused, the frozen parameters' gradients are never computed (dead code to XLA)
            grads = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # non-padding tokens of the global batch: a sum over the sharded masks, so every host sees the total
        tokens = sum(jnp.sum(v, dtype=jnp.int32) for k, v in batch.items() if k.endswith("_mask"))
        # a diverged step must never be checkpointed: the loop checks this before saving
        finite = all_finite(params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"]),
                   "tokens": tokens, "params_finite": finite, **aux}
        if cfg.loss.learnable_temperature:
            metrics["temperature"] = jnp.exp(-params["log_inv_temperature"])
        if blended:
            metrics["quant_mix"] = kw["quant_mix"]
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    b_sh = batch_shardings(mesh, cfg.data.num_negatives > 0)
    teacher_sh = None if teacher is None else state_shardings(teacher[1], mesh)
    in_sh = (state_sh, b_sh) if teacher is None else (state_sh, b_sh, teacher_sh)

    def jitted(blended):
        return jax.jit(partial(step_fn, blended=blended), in_shardings=in_sh, out_shardings=(state_sh, repl),
                       donate_argnums=0)

    return StepFns(init, jitted(False), state_sh, b_sh, abs_state, teacher_sh,
                   jitted(True) if warmup else None, warmup)
