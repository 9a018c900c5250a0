"""faiss adapter. f32: ``IndexFlatIP`` / ``IndexHNSWFlat`` (inner product). i8: ``IndexScalarQuantizer`` /
``IndexHNSWSQ`` with ``QT_8bit_direct_signed``, which stores each given value v in [-128, 127] as the byte
v + 128 (our int8 codes as they are), inner product of the codes. b1: ``IndexBinaryFlat`` / ``IndexBinaryHNSW``
over packed uint8 rows, ``d`` in bits, Hamming. Threads: ``omp_set_num_threads`` around each call.
"""
import os

import numpy as np

from bitembed_jax.index.engine import Hnsw, require

_FILE = "faiss.index"


class FaissEngine:
    name = "faiss"

    def __init__(self, kind: str, dim: int, hnsw: Hnsw | None):
        self.faiss = require("faiss", "faiss")
        self.kind, self.dim, self.hnsw = kind, dim, hnsw
        self.index = None

    def _new_index(self):
        f, h, ip = self.faiss, self.hnsw, self.faiss.METRIC_INNER_PRODUCT
        sq = f.ScalarQuantizer.QT_8bit_direct_signed
        if self.kind == "b1":
            ix = f.IndexBinaryFlat(self.dim) if h is None else f.IndexBinaryHNSW(self.dim, h.m)
        elif self.kind == "i8":
            ix = f.IndexScalarQuantizer(self.dim, sq, ip) if h is None else f.IndexHNSWSQ(self.dim, sq, h.m, ip)
        else:
            ix = f.IndexFlatIP(self.dim) if h is None else f.IndexHNSWFlat(self.dim, h.m, ip)
        if h is not None:
            ix.hnsw.efConstruction = h.ef_construction
        return ix

    def _typed(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors, np.uint8 if self.kind == "b1" else np.float32)

    def add(self, vectors: np.ndarray, threads: int = 1) -> None:
        self.faiss.omp_set_num_threads(threads)
        self.index = self._new_index()
        x = self._typed(vectors)
        if not self.index.is_trained:  # the direct quantizer has nothing to learn; train marks it ready
            self.index.train(x)
        self.index.add(x)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, count: int, threads: int = 1):
        self.faiss.omp_set_num_threads(threads)
        if self.hnsw is not None:
            self.index.hnsw.efSearch = self.hnsw.ef(count)
        dist, keys = self.index.search(self._typed(queries), count)
        scores = -dist.astype(np.float32) if self.kind == "b1" else dist.astype(np.float32)
        scores[keys < 0] = -np.inf
        return keys.astype(np.int64), scores

    def save(self, folder: str) -> list[str]:
        path = os.path.join(folder, _FILE)
        (self.faiss.write_index_binary if self.kind == "b1" else self.faiss.write_index)(self.index, path)
        return [_FILE]

    @classmethod
    def load(cls, folder: str, kind: str, dim: int, hnsw: Hnsw | None, mmap: bool = True) -> "FaissEngine":
        e = cls(kind, dim, hnsw)
        path = os.path.join(folder, _FILE)
        if kind == "b1":
            e.index = e.faiss.read_index_binary(path)
        else:
            e.index = e.faiss.read_index(path, e.faiss.IO_FLAG_MMAP if mmap else 0)
        return e

    def memory_bytes(self) -> int:
        """faiss reports no memory figure: the serialized size, which is what its structures hold."""
        f = self.faiss
        writer = f.serialize_index_binary if self.kind == "b1" else f.serialize_index
        return int(writer(self.index).nbytes)
