"""PostgreSQL + pgvector as an engine: one table per index, searched and rescored in SQL.

Columns by precision (pgvector has no int8 type; halfvec holds our int8 codes exactly, integers up to 2048
being exact in float16):
  fp32, fp32-calibrated  v vector(d)                    first stage  v <#> q   (negative inner product)
  int8                   r halfvec(d) codes, s scale     first stage  r <=> q   (cosine of the codes)
  binary                 b bit(d) signs, r, s            first stage  b <~> q   (Hamming)
Rescoring is the SQL re-rank subquery of pgvector's binary-quantization recipe, over the int8 codes:
  SELECT id FROM (SELECT id, r, s FROM t ORDER BY <first stage> LIMIT k*m) c ORDER BY (r <#> qf) * s LIMIT k
with qf the (calibrated) float query as halfvec. HNSW: ``CREATE INDEX ... USING hnsw`` with vector_ip_ops,
halfvec_cosine_ops or bit_hamming_ops (m, ef_construction; ``hnsw.ef_search`` per query); flat = a sequential
scan (exact).
"""
import threading

import numpy as np

from bitembed_jax.index.coding import Coding
from bitembed_jax.index.engine import Hnsw

PRECISIONS = ("fp32", "fp32-calibrated", "int8", "binary")
_OPS = {"f32": ("v", "vector_ip_ops", "<#>"), "i8": ("r", "halfvec_cosine_ops", "<=>"),
        "b1": ("b", "bit_hamming_ops", "<~>")}


def _vec(x) -> str:
    return "[" + ",".join(repr(float(v)) for v in x) + "]"


def _bits(packed_row: np.ndarray, dim: int) -> str:
    return "".join("1" if b else "0" for b in np.unpackbits(packed_row, count=dim))


class PgvectorIndex:
    engine = "pgvector"

    def __init__(self, dsn: str, table: str, coding: Coding, hnsw: Hnsw | None, count: int):
        self.dsn, self.table, self.coding, self.hnsw, self.count = dsn, table, coding, hnsw, count
        self._local = threading.local()

    def conn(self):
        import psycopg

        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = psycopg.connect(self.dsn, autocommit=True)
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    @classmethod
    def build(cls, dsn: str, table: str, floats: np.ndarray, coding: Coding, hnsw: Hnsw | None) -> "PgvectorIndex":
        if coding.precision not in PRECISIONS:
            raise ValueError(f"pgvector: precision {coding.precision} not offered (one of {', '.join(PRECISIONS)})")
        ix = cls(dsn, table, coding, hnsw, len(floats))
        d, c = coding.dim, ix.conn()
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute(f"DROP TABLE IF EXISTS {table}")
        cols = {"f32": f"v vector({d})", "i8": f"r halfvec({d}), s real",
                "b1": f"b bit({d}), r halfvec({d}), s real"}[coding.kind]
        c.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, {cols})")
        ix._copy(floats)
        if hnsw is not None:
            col, ops, _ = _OPS[coding.kind]
            c.execute("SET maintenance_work_mem = '512MB'")
            c.execute(f"CREATE INDEX ON {table} USING hnsw ({col} {ops}) WITH (m = {hnsw.m}, "
                      f"ef_construction = {hnsw.ef_construction})")
        c.execute(f"VACUUM ANALYZE {table}")
        return ix

    def _copy(self, floats: np.ndarray) -> None:
        coding = self.coding
        if coding.kind == "f32":
            v = coding.engine_vectors(floats)
        else:
            store = coding.rescore_store(floats)
            if coding.kind == "b1":
                bits = coding.engine_vectors(floats)
        names = {"f32": "id, v", "i8": "id, r, s", "b1": "id, b, r, s"}[coding.kind]
        with self.conn().cursor() as cur, cur.copy(f"COPY {self.table} ({names}) FROM STDIN") as cp:
            for i in range(len(floats)):
                if coding.kind == "f32":
                    cp.write_row((i, _vec(v[i])))
                elif coding.kind == "i8":
                    cp.write_row((i, _vec(store.codes[i]), float(store.scale[i])))
                else:
                    cp.write_row((i, _bits(bits[i], coding.dim), _vec(store.codes[i]), float(store.scale[i])))

    def _sql(self, fetch: int, k: int, rescore: bool) -> str:
        col, _, op = _OPS[self.coding.kind]
        cast = {"f32": "vector", "i8": "halfvec", "b1": f"bit({self.coding.dim})"}[self.coding.kind]
        first = f"SELECT id, {'r, s' if rescore else '0'} FROM {self.table} ORDER BY {col} {op} %s::{cast} LIMIT {fetch}"
        if not rescore:
            return first
        return f"SELECT id FROM ({first}) c ORDER BY (r <#> %s::halfvec) * s LIMIT {k}"

    def _query_args(self, q_codes, q_float, rescore: bool):
        if self.coding.kind == "b1":
            first = _bits(q_codes, self.coding.dim)
        else:
            first = _vec(q_codes)
        return (first, _vec(q_float)) if rescore else (first,)

    def search_one(self, q_codes, q_float, k: int, rescore: int) -> np.ndarray:
        fetch = min(k * rescore, self.count) if rescore > 1 else k
        c = self.conn()
        if self.hnsw is not None:
            c.execute(f"SET hnsw.ef_search = {self.hnsw.ef(fetch)}")
        rows = c.execute(self._sql(fetch, k, rescore > 1), self._query_args(q_codes, q_float, rescore > 1)).fetchall()
        out = np.full(k, -1, np.int64)
        out[:len(rows)] = [r[0] for r in rows]
        return out

    def search(self, query_floats: np.ndarray, k: int = 10, rescore: int = 1, threads: int = 1):
        """(rows int64 (nq, k), None): the ranking SQL returns; ``threads`` connections share the queries."""
        q = self.coding.check(query_floats, "queries")
        if rescore > 1 and not self.coding.rescorable:
            raise ValueError(f"{self.coding.precision}: rescoring is for int and binary indexes")
        codes, floats = self.coding.engine_vectors(q), self.coding.float_view(q)
        out = np.empty((len(q), k), np.int64)

        def work(rows):
            for i in rows:
                out[i] = self.search_one(codes[i], floats[i], k, rescore)

        if threads == 1:
            work(range(len(q)))
        else:
            ts = [threading.Thread(target=work, args=(range(t, len(q), threads),)) for t in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        return out, None

    def disk_bytes(self) -> int:
        """The table and its indexes as PostgreSQL stores them (pg_total_relation_size)."""
        return int(self.conn().execute(f"SELECT pg_total_relation_size('{self.table}')").fetchone()[0])
