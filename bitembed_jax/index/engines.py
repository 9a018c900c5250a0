"""The engine adapters by name, each imported when asked for (each engine is an optional dependency)."""
from bitembed_jax.index.engine import ENGINES


def engine_class(name: str):
    """The adapter class, imported when asked for (each engine is an optional dependency)."""
    if name == "usearch":
        from bitembed_jax.index.usearch_engine import UsearchEngine
        return UsearchEngine
    if name == "faiss":
        from bitembed_jax.index.faiss_engine import FaissEngine
        return FaissEngine
    if name == "pgvector":
        from bitembed_jax.index.pgvector_engine import PgvectorEngine
        return PgvectorEngine
    raise ValueError(f"--engine {name!r}: must be one of {', '.join(ENGINES)}")
