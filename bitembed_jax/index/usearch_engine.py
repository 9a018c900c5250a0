"""usearch adapter. Flat: the vectors in a plain array searched exactly (``usearch.index.search(exact=True)``),
saved as .npy and memory-mapped when opened. HNSW: ``usearch.index.Index`` saved in its own file, opened with
``view`` (memory-mapped) or ``restore`` (read into memory).

Types: f32 with ``ip``; i8 as signed bytes with ``cos`` (the cosine of the codes = that of the dequantised
vectors); b1 with ``ndim`` in bits, packed uint8 rows and ``dtype="b1"`` given explicitly, ``hamming``.
"""
import os

import numpy as np

from bitembed_jax.index.engine import Hnsw, pad_missing, require

_METRIC = {"f32": "ip", "i8": "cos", "b1": "hamming"}
_FLAT, _GRAPH = "vectors.npy", "usearch.index"


class UsearchEngine:
    name = "usearch"

    def __init__(self, kind: str, dim: int, hnsw: Hnsw | None):
        require("usearch", "usearch")
        self.kind, self.dim, self.hnsw = kind, dim, hnsw
        self.data = None  # flat
        self.index = None  # HNSW

    def _new_index(self):
        from usearch.index import Index

        h = self.hnsw
        return Index(ndim=self.dim, metric=_METRIC[self.kind], dtype=self.kind, connectivity=h.m,
                     expansion_add=h.ef_construction, expansion_search=h.ef_search)

    def add(self, vectors: np.ndarray, threads: int = 1) -> None:
        if self.hnsw is None:
            self.data = np.ascontiguousarray(vectors)
            return
        self.index = self._new_index()
        self.index.add(np.arange(len(vectors), dtype=np.uint64), np.ascontiguousarray(vectors), threads=threads,
                       dtype=self.kind)

    def __len__(self) -> int:
        return len(self.data) if self.hnsw is None else len(self.index)

    def search(self, queries: np.ndarray, count: int, threads: int = 1):
        from usearch.index import search

        q = np.ascontiguousarray(queries)
        if self.hnsw is None:  # exact search refuses count > n: ask for n, pad like the index does
            m = search(self.data, q, min(count, len(self.data)), _METRIC[self.kind], exact=True, threads=threads,
                       dtype=self.kind)
        else:
            self.index.expansion_search = self.hnsw.ef(count)
            m = self.index.search(q, count, threads=threads, dtype=self.kind)
        keys, dist = np.atleast_2d(m.keys), np.atleast_2d(m.distances).astype(np.float32)
        found = np.atleast_1d(m.counts) if hasattr(m, "counts") else np.array([len(m.keys)])  # one query: Matches
        if keys.shape[1] < count:
            keys = np.pad(keys, ((0, 0), (0, count - keys.shape[1])))
            dist = np.pad(dist, ((0, 0), (0, count - dist.shape[1])), constant_values=np.nan)
        with np.errstate(invalid="ignore"):  # the NaN padding, masked next
            scores = -dist if self.kind == "b1" else 1.0 - dist
        return pad_missing(keys.astype(np.int64), scores, found)  # the padding key 2^64-1 is masked by counts

    def save(self, folder: str) -> list[str]:
        if self.hnsw is None:
            with open(os.path.join(folder, _FLAT), "wb") as f:
                np.save(f, self.data)
            return [_FLAT]
        self.index.save(os.path.join(folder, _GRAPH))
        return [_GRAPH]

    @classmethod
    def load(cls, folder: str, kind: str, dim: int, hnsw: Hnsw | None, mmap: bool = True) -> "UsearchEngine":
        e = cls(kind, dim, hnsw)
        if hnsw is None:
            e.data = np.load(os.path.join(folder, _FLAT), mmap_mode="r" if mmap else None, allow_pickle=False)
        else:
            e.index = e._new_index()
            path = os.path.join(folder, _GRAPH)
            e.index.view(path) if mmap else e.index.load(path)
        return e

    def memory_bytes(self) -> int:
        """What the engine itself reports (HNSW: ``memory_usage``, its arenas included); flat: the array."""
        return int(self.data.nbytes) if self.hnsw is None else int(self.index.memory_usage)
