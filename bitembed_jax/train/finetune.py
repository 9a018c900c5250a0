"""Fine-tuning loss: multi-precision contrastive + similarity-distribution and attention-relation
distillation from the frozen full-precision teacher, all inside the one jitted step."""
import jax
from flax import nnx

from bitembed_jax.losses.distill import attention_relation_distill, sharded_similarity_distill
from bitembed_jax.models import pool
from bitembed_jax.train.step import multi_precision_info_nce, split_inputs, temperature_of


def _encode(model, inputs, pooling, layer):
    ids, mask = inputs
    out = model(ids, mask, qkv_layer=layer)
    return pool(out.last_hidden_state, mask, pooling), out.qkv


def finetune_loss_and_grads(params, batch, *, graphdef, mesh, cfg, teacher_params, teacher_graphdef,
                            model_shardings=None):
    d = cfg.distill
    q_in, p_in, n_in = split_inputs(batch)
    k = batch["negative_ids"].shape[1] if n_in is not None else 0
    want_attn = d.attn_weight > 0
    layer_s = int(d.student_layer) if want_attn else None
    layer_t = int(d.teacher_layer) if want_attn else None

    teacher = nnx.merge(teacher_graphdef, jax.lax.stop_gradient(teacher_params))
    tq, tq_qkv = _encode(teacher, q_in, cfg.init.pooling, layer_t)
    tp, tp_qkv = _encode(teacher, p_in, cfg.init.pooling, layer_t)
    tn = None if n_in is None else _encode(teacher, n_in, cfg.init.pooling, None)[0].reshape(-1, k, tq.shape[-1])

    def loss_fn(prm):
        student = nnx.merge(graphdef, prm["model"])
        sq, sq_qkv = _encode(student, q_in, cfg.init.pooling, layer_s)
        sp, sp_qkv = _encode(student, p_in, cfg.init.pooling, layer_s)
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
        return total, metrics

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, aux, grads
