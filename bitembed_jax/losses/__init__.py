"""Training objectives: contrastive InfoNCE and distillation, as pure functions."""
from bitembed_jax.losses.contrastive import candidate_scores, info_nce, sharded_info_nce
from bitembed_jax.losses.distill import (attention_relation_distill, sharded_similarity_distill,
                                         similarity_distill)

__all__ = ["attention_relation_distill", "candidate_scores", "info_nce", "sharded_info_nce",
           "sharded_similarity_distill", "similarity_distill"]
