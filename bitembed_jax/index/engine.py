"""What every engine adapter offers, and the HNSW settings they share.

An adapter holds one collection of vectors of one kind (f32, i8 signed bytes, b1 packed bits) under keys
0..n-1, flat (exact) or HNSW, and answers ``search(queries, count, threads) -> (keys, scores)``: keys int64
(nq, count) with -1 where the engine found fewer than ``count`` (usearch pads with NaN and an unused key),
scores float32 with higher = closer (distances are turned around: usearch's ``ip`` gives 1 - dot, i8 ``ip``
gives -dot, Hamming gives a count of differing bits).
"""
import dataclasses

import numpy as np

ENGINES = ("usearch", "faiss", "pgvector")
SEED = 0  # HNSW level draws: usearch and faiss use fixed internal generators; one build thread makes them repeatable


@dataclasses.dataclass(frozen=True)
class Hnsw:
    """HNSW graph settings, the same for every engine (usearch's defaults)."""
    m: int = 16  # links per node (usearch connectivity, faiss M, pgvector m)
    ef_construction: int = 128
    ef_search: int = 64  # raised to the number of candidates fetched when that is larger

    def ef(self, count: int) -> int:
        return max(self.ef_search, count)


def require(module: str, package: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"the {package} engine is not installed: pip install -e '.[index]'") from None


def pad_missing(keys: np.ndarray, scores: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys past each row's ``found`` count become -1 and their scores -inf (usearch's NaN padding)."""
    keys = keys.astype(np.int64, copy=True)
    scores = scores.astype(np.float32, copy=True)
    miss = np.arange(keys.shape[1])[None, :] >= np.asarray(found)[:, None]
    keys[miss] = -1
    scores[miss] = -np.inf
    return keys, scores
