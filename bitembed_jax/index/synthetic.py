"""A large corpus for the scale bench: vectors drawn dimension by dimension from a normal distribution with
the per-dimension mean and std of a model's real vectors (e.g. encoded CISI passages), rescaled to unit length
when the model's own vectors are. Dimensions are drawn independently (no correlations): the memory, build and
speed figures depend on n and the dimension only; recall on such vectors is recall against exact search on the
same synthetic set, not a retrieval quality.
"""
import numpy as np

CHUNK = 100_000


def draw(mean: np.ndarray, std: np.ndarray, n: int, seed: int, unit: bool) -> np.ndarray:
    """float32 (n, d), generated ``CHUNK`` rows at a time into one array (no float64 copy of the whole)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(mean)), np.float32)
    for s in range(0, n, CHUNK):
        x = rng.standard_normal((min(CHUNK, n - s), len(mean)), np.float32) * std + mean
        if unit:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + len(x)] = x
    return out


def chunked(fn, x: np.ndarray) -> np.ndarray:
    """``fn`` applied ``CHUNK`` rows at a time (coding a 1M corpus without its float temporaries at once)."""
    return np.concatenate([fn(x[s:s + CHUNK]) for s in range(0, len(x), CHUNK)])
