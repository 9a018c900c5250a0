#!/usr/bin/env bash
# The vector-index figures of docs/experiments/2026-12-05-vector-index.md: our vectors in usearch, faiss and
# PostgreSQL + pgvector (bitembed-jax index bench), on CISI with the fp Gemma3-270M, then at 1M vectors.
# MODEL: the converted fp Gemma3-270M (README "A real model on a laptop", convert without --bitnet, --pooling mean).
set -euo pipefail
MODEL=${MODEL:-/tmp/index-g270/model}
CISI=${CISI:-../shared/data/cisi}
OUT=${OUT:-/tmp/index-runs}
mkdir -p "$OUT"
# 0. the model's vectors, once, cut at 128 tokens: a 256-passage sample, the judged queries, the corpus
python bench/vector_index_encode.py "$CISI" "$OUT" "$MODEL"
# 1. CISI: every precision x engine x (flat, HNSW) x rescore 1/4
bitembed-jax index bench --model "$MODEL" --retrieval "$CISI" --corpus-vectors "$OUT/cisi_docs.npy" \
    --query-vectors "$OUT/cisi_queries.npy" --engines usearch,faiss,pgvector --precision all --rescore 1,4 \
    --output "$OUT/cisi"
# 2. 1M vectors drawn per dimension from the mean/std of the model's vectors of the 256 sampled CISI passages
bitembed-jax index bench --model "$MODEL" --synthetic 1000000 --stats-from "$OUT/cisi_256.npy" \
    --synthetic-queries 100 --engines usearch,faiss --precision fp32,int8,binary --variants flat --rescore 1,4 \
    --output "$OUT/scale-flat"
