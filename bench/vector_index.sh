#!/usr/bin/env bash
# The vector-index figures of docs/experiments/2026-12-05-vector-index.md: our vectors in usearch, faiss and
# PostgreSQL + pgvector (bitembed-jax index bench), on CISI with the fp Gemma3-270M, then at 1M vectors.
# MODEL: the converted fp Gemma3-270M (README "A real model on a laptop", convert without --bitnet, --pooling mean).
set -euo pipefail
MODEL=${MODEL:-/tmp/index-g270/model}
CISI=${CISI:-../shared/data/cisi}
OUT=${OUT:-/tmp/index-runs}
# 1. CISI: every precision x engine x (flat, HNSW) x rescore 1/4
bitembed-jax index bench --model "$MODEL" --retrieval "$CISI" --engines usearch,faiss,pgvector --precision all \
    --rescore 1,4 --output "$OUT/cisi"
# 2. 1M vectors drawn per dimension from the mean/std of the model's vectors of 256 CISI passages
python - "$CISI" "$OUT/cisi_256.txt" <<'PY'
import sys, numpy as np
from bitembed_jax.eval.local import read_beir
t = read_beir(sys.argv[1]).corpus_texts
keep = np.sort(np.random.default_rng(0).choice(len(t), 256, replace=False))
open(sys.argv[2], "w").write("\n".join(t[i].replace("\n", " ") for i in keep) + "\n")
PY
bitembed-jax encode --model "$MODEL" --input "$OUT/cisi_256.txt" --out "$OUT/cisi_256.npy" --overwrite
bitembed-jax index bench --model "$MODEL" --synthetic 1000000 --stats-from "$OUT/cisi_256.npy" --synthetic-queries 100 \
    --engines usearch,faiss --precision fp32,int8,binary --variants flat --rescore 1,4 --output "$OUT/scale-flat"
bitembed-jax index bench --model "$MODEL" --synthetic 1000000 --stats-from "$OUT/cisi_256.npy" --synthetic-queries 100 \
    --engines usearch,faiss --precision binary --variants hnsw --rescore 1,4 --output "$OUT/scale-hnsw"
