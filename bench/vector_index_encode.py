"""Encode CISI once for the vector-index bench: python bench/vector_index_encode.py BEIR_DIR OUT_DIR MODEL"""
# One model load, max_length 128 (as the earlier CISI figures): a 256-passage sample first (the 1M run's
# statistics), then the judged queries, then the whole corpus, each saved as soon as it is done.
import sys
import numpy as np
from bitembed_jax.encode import Encoder
from bitembed_jax.eval.local import embed_texts, read_beir

out = sys.argv[2]
d = read_beir(sys.argv[1])
enc = Encoder.from_pretrained(sys.argv[3], max_length=128)
keep = np.sort(np.random.default_rng(0).choice(len(d.corpus_texts), 256, replace=False))
sample = embed_texts(enc, [d.corpus_texts[i] for i in keep], batch_size=32)
np.save(f"{out}/cisi_256.npy", sample); print("sample done", flush=True)
np.save(f"{out}/cisi_queries.npy", embed_texts(enc, d.query_texts, batch_size=32, prompt=enc.prompts.get("query", "")))
print("queries done", flush=True)
rest = [i for i in range(len(d.corpus_texts)) if i not in set(keep.tolist())]
vecs = np.empty((len(d.corpus_texts), sample.shape[1]), np.float32)
vecs[keep] = sample
vecs[rest] = embed_texts(enc, [d.corpus_texts[i] for i in rest], batch_size=32)
np.save(f"{out}/cisi_docs.npy", vecs); print("corpus done", flush=True)
