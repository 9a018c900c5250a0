"""The memory an index takes when served: a fresh process opens it read into memory (not memory-mapped),
runs one search, and prints the growth of its resident set in bytes. A fresh process, because in the process
that built the index the allocator reuses the build's freed memory and the growth would read near zero.

    python -m bitembed_jax.index.rss_probe INDEX_FOLDER
"""
import sys

import numpy as np
import psutil

from bitembed_jax.index.folder import VectorIndex


def main(folder: str) -> int:
    m = VectorIndex.read_manifest(folder)
    VectorIndex.open(folder, mmap=True)  # imports the engine and its libraries before the baseline
    q = np.zeros((1, int(m["dim"])), np.float32)
    q[0, 0] = 1.0
    before = psutil.Process().memory_info().rss
    ix = VectorIndex.open(folder, mmap=False)
    ix.search(q, 10)
    return psutil.Process().memory_info().rss - before


if __name__ == "__main__":
    print(main(sys.argv[1]))
