"""Fine-tuning loss: multi-precision contrastive + distillation from the frozen full-precision teacher
(similarity distribution, attention relations, and optionally pooled-vector and per-layer hidden-state
alignment), all inside the one jitted step."""
import jax
from flax import nnx

from bitembed_jax.losses.distill import (attention_relation_distill, cosine_distill, hidden_state_distill,
                                         sharded_similarity_distill)
from bitembed_jax.models import pool
from bitembed_jax.train.step import merge_model, multi_precision_info_nce, split_inputs, temperature_of


def _encode(model, inputs, pooling, layer, hidden=False):
    ids, mask = inputs
    out = model(ids, mask, qkv_layer=layer, hidden_states=hidden)
    return pool(out.last_hidden_state, mask, pooling), out.qkv, out.hidden_states


def finetune_loss_and_grads(params, batch, *, graphdef, mesh, cfg, teacher_params, teacher_graphdef,
                            model_shardings=None, quant_mix=None):
    d = cfg.distill
    q_in, p_in, n_in = split_inputs(batch)
    k = batch["negative_ids"].shape[1] if n_in is not None else 0
    want_attn = d.attn_weight > 0
    layer_s = int(d.student_layer) if want_attn else None
    layer_t = int(d.teacher_layer) if want_attn else None

    want_hidden = d.hidden_weight > 0

    teacher = nnx.merge(teacher_graphdef, jax.lax.stop_gradient(teacher_params))
    tq, tq_qkv, tq_h = _encode(teacher, q_in, cfg.init.pooling, layer_t, want_hidden)
    tp, tp_qkv, tp_h = _encode(teacher, p_in, cfg.init.pooling, layer_t, want_hidden)
    tn = None if n_in is None else _encode(teacher, n_in, cfg.init.pooling, None)[0].reshape(-1, k, tq.shape[-1])

    def loss_fn(prm):
        student = merge_model(graphdef, prm["model"], quant_mix)
        sq, sq_qkv, sq_h = _encode(student, q_in, cfg.init.pooling, layer_s, want_hidden)
        sp, sp_qkv, sp_h = _encode(student, p_in, cfg.init.pooling, layer_s, want_hidden)
        sn = None if n_in is None else _encode(student, n_in, cfg.init.pooling, None)[0].reshape(-1, k, sq.shape[-1])
        contrastive, metrics = multi_precision_info_nce(mesh, sq, sp, sn, temperature=temperature_of(prm, cfg.loss),
                                                        loss_cfg=cfg.loss)
        total = contrastive
        metrics["contrastive"] = contrastive
        if d.sim_weight > 0:
            sim = sharded_similarity_distill(mesh, sq, sp, sn, tq, tp, tn, tau_student=d.tau_student,
                                             tau_teacher=d.tau_teacher)
            total = total + d.sim_weight * sim
            metrics["sim_distill"] = sim
        if want_attn:
            rel = 0.5 * (attention_relation_distill(sq_qkv, tq_qkv, q_in[1], num_relation_heads=d.relation_heads)
                         + attention_relation_distill(sp_qkv, tp_qkv, p_in[1], num_relation_heads=d.relation_heads))
            total = total + d.attn_weight * rel
            metrics["attn_distill"] = rel
        if d.embed_weight > 0:
            emb = 0.5 * (cosine_distill(sq, tq) + cosine_distill(sp, tp))
            total = total + d.embed_weight * emb
            metrics["embed_distill"] = emb
        if want_hidden:
            hid = 0.5 * (hidden_state_distill(sq_h, tq_h, q_in[1]) + hidden_state_distill(sp_h, tp_h, p_in[1]))
            total = total + d.hidden_weight * hid
            metrics["hidden_distill"] = hid
        return total, metrics

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, aux, grads
