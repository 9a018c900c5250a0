"""An index folder: the engine's own file(s), the int8 codes rescoring reads (``rescore_int8.npy`` and their
scales, memory-mapped when searched), and ``manifest.json``: engine, precision, HNSW settings, the model it was
built with (path and fingerprint) and the calibration, so queries are coded the way the corpus was.

``VectorIndex.build`` writes a temporary sibling folder and renames it into place (nothing replaced without
``overwrite``); ``VectorIndex.open`` checks the manifest against what the caller expects.
"""
import hashlib
import json
import os
import time

import numpy as np

from bitembed_jax.index.coding import Coding, check_precision
from bitembed_jax.index.engine import Hnsw
from bitembed_jax.index.engines import engine_class
from bitembed_jax.index.rescore import rescore as rescore_hits
from bitembed_jax.io import paths
from bitembed_jax.quant.calibration import Calibration

FORMAT, VERSION = "bitembed-vector-index", 1
MANIFEST = "manifest.json"
RESCORE_CODES, RESCORE_SCALE = "rescore_int8.npy", "rescore_scale.npy"


def model_fingerprint(model_dir: str) -> str:
    """sha256 of the folder's bitembed_config.json (architecture, pooling, calibration) and of the names and
    sizes of its parameter files: another model, or the same one calibrated differently, has another."""
    from bitembed_jax.io.model_dir import CONFIG_NAME, PARAMS_DIR

    h = hashlib.sha256()
    with open(os.path.join(model_dir, CONFIG_NAME), "rb") as f:
        h.update(f.read())
    for root, _, files in sorted(os.walk(os.path.join(model_dir, PARAMS_DIR))):
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(f"{os.path.relpath(p, model_dir)}:{os.path.getsize(p)};".encode())
    return h.hexdigest()[:16]


def _save_npy(path: str, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, a)


class VectorIndex:
    def __init__(self, folder: str, manifest: dict, engine, coding: Coding, rescore_codes, rescore_scale):
        self.folder, self.manifest, self.engine, self.coding = folder, manifest, engine, coding
        self.rescore_codes, self.rescore_scale = rescore_codes, rescore_scale

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, out: str, vectors: np.ndarray, coding: Coding, engine: str, *, hnsw: Hnsw | None = None,
              rescore_store=None, model: dict | None = None, threads: int = 1, overwrite: bool = False,
              source: str = "") -> "VectorIndex":
        """``vectors``: what ``coding.engine_vectors`` made (or stored codes in the engine's type);
        ``rescore_store``: int8 ``StoredEmbeddings`` for rescoring, or None (then the index cannot rescore)."""
        from bitembed_jax.io.model_dir import check_writable

        check_writable(out, overwrite)
        eng = engine_class(engine)(coding.kind, coding.dim, hnsw)
        t = time.perf_counter()
        eng.add(vectors, threads=threads)
        seconds = time.perf_counter() - t
        with paths.atomic_dir(out) as tmp:
            files = eng.save(tmp)
            if rescore_store is not None:
                _save_npy(os.path.join(tmp, RESCORE_CODES), rescore_store.codes)
                _save_npy(os.path.join(tmp, RESCORE_SCALE), np.asarray(rescore_store.scale, np.float32))
            manifest = {"format": FORMAT, "version": VERSION, "engine": engine, "precision": coding.precision,
                        "kind": coding.kind, "dim": coding.dim, "count": len(vectors),
                        "hnsw": None if hnsw is None else vars(hnsw).copy(), "engine_files": files,
                        "rescore": rescore_store is not None, "model": model or {}, "source": source,
                        "calibration": None if coding.calibration is None else coding.calibration.to_meta(),
                        "build": {"threads": threads, "seconds": round(seconds, 4)}}
            paths.write_text_atomic(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=2))
        return cls.open(out)

    # ------------------------------------------------------------------ open
    @staticmethod
    def read_manifest(folder: str) -> dict:
        path = os.path.join(folder, MANIFEST)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--index {folder} not found")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {folder} is not a bitembed-jax index (index build makes one)")
        try:
            with open(path, encoding="utf-8") as f:
                m = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
        return m

    @classmethod
    def open(cls, folder: str, *, precision: str | None = None, model_fingerprint: str | None = None,
             mmap: bool = True) -> "VectorIndex":
        """Open an index; ``precision`` / ``model_fingerprint``: what the caller will query it with (checked).
        ``mmap``: the engine's file memory-mapped (usearch ``view``, faiss IO_FLAG_MMAP; binary faiss indexes are
        always read) or read into memory."""
        m = cls.read_manifest(folder)
        where = os.path.join(folder, MANIFEST)
        if precision is not None and precision != m["precision"]:
            raise ValueError(f"{where}: the index holds {m['precision']} vectors, asked for {precision}")
        built = m["model"].get("fingerprint")
        if model_fingerprint is not None and built != model_fingerprint:
            raise ValueError(f"{where}: the index was built with another model ({m['model'].get('path')}, "
                             f"fingerprint {built}); queries must be encoded by the model that built it")
        for name in m["engine_files"] + ([RESCORE_CODES, RESCORE_SCALE] if m["rescore"] else []):
            if not os.path.exists(os.path.join(folder, name)):
                raise FileNotFoundError(f"{os.path.join(folder, name)} not found: the index folder is incomplete")
        cal = None if m["calibration"] is None else Calibration.from_meta(m["calibration"], where)
        coding = Coding(m["precision"], int(m["dim"]), cal)
        hnsw = None if m["hnsw"] is None else Hnsw(**m["hnsw"])
        eng = engine_class(m["engine"]).load(folder, coding.kind, coding.dim, hnsw, mmap=mmap)
        codes = scale = None
        if m["rescore"]:
            # memory-mapped whatever ``mmap`` says: rescoring reads only its candidates' rows
            codes = np.load(os.path.join(folder, RESCORE_CODES), mmap_mode="r", allow_pickle=False)
            scale = np.load(os.path.join(folder, RESCORE_SCALE), allow_pickle=False)
        return cls(folder, m, eng, coding, codes, scale)

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return int(self.manifest["count"])

    def search(self, query_floats: np.ndarray, k: int = 10, rescore: int = 1, threads: int = 1):
        """Top ``k`` (rows int64, scores float32) per float query (the model's raw vectors, coded here);
        ``rescore`` > 1 fetches k x rescore by the codes and re-ranks them with the stored int8 codes."""
        if k < 1 or rescore < 1:
            raise ValueError(f"k ({k}) and the rescore multiplier ({rescore}) must be at least 1")
        q = self.coding.check(query_floats, "queries")
        if rescore > 1 and not self.coding.rescorable:
            raise ValueError(f"{self.coding.precision} vectors are searched exactly as stored; rescoring is for "
                             "int and binary indexes (use --rescore 1)")
        if rescore > 1 and self.rescore_codes is None:
            raise ValueError(f"{self.folder} keeps no int8 codes to rescore with (built from "
                             f"{self.coding.precision} codes); rebuild it from texts or float vectors")
        fetch = min(k * rescore, len(self)) if rescore > 1 else k
        keys, scores = self.engine.search(self.coding.engine_vectors(q), fetch, threads=threads)
        if rescore == 1:
            return keys, scores
        return rescore_hits(self.coding.float_view(q), keys, self.rescore_codes, self.rescore_scale, k)
