"""Streaming mode: train straight from JSONL/Parquet files, with no dataset build.

Each process reads its own slice of the inputs: whole files (file ``i`` goes to process ``i % n``) when there
are at least as many files as processes, else every file with a record stride (record ``r`` of a file to
process ``r % n``: each process then parses every file but keeps 1/n of it). Its files are interleaved (grain's
InterleaveIterDataset, 16 open at once), shuffled in a window of ``shuffle_window`` records (grain's
WindowShuffleIterDataset), cut into local batches and tokenized. An epoch is one pass over the process's
share; the next epoch reshuffles the file order and the windows, and a local batch may straddle two epochs.

The iterator state (each process's position in each open file, its window and its epoch) is saved with the
train state: ``get_state`` gathers every process's state (a collective: call it on every process at once),
``set_state`` takes this process's entry back, so a restarted run continues with exactly the batches an
uninterrupted one would have seen (with the same number of processes).
"""
import atexit
import gc
import json
import weakref

import grain
import numpy as np
from grain import experimental as gx

from bitembed_jax.data.stream_files import Counter, FilePairs, expand_inputs
from bitembed_jax.data.tokenize import DEFAULT_QUERY_TEMPLATE, PairArrays

CYCLE_LENGTH = 16  # files read at once by one process


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _Epochs(grain.DatasetIterator):
    """Epoch after epoch of one process's share; state: the epoch and the position inside it."""

    def __init__(self, make_epoch, process_index: int):
        super().__init__()
        self._make, self._process = make_epoch, process_index
        self._epoch, self._yielded = 0, 0
        self._it = iter(make_epoch(0))

    def __next__(self):
        while True:
            try:
                out = next(self._it)
            except StopIteration:
                if not self._yielded:
                    raise ValueError(f"process {self._process}'s share of config.data.train_files holds no valid "
                                     "record (fewer records than processes?)") from None
                self._epoch, self._yielded = self._epoch + 1, 0
                self._it.close()  # its files' read-ahead threads
                self._it = iter(self._make(self._epoch))
                continue
            self._yielded += 1
            return out

    def close(self):
        self._it.close()
        super().close()

    def get_state(self):
        return {"epoch": self._epoch, "yielded": self._yielded, "inner": self._it.get_state()}

    def set_state(self, state):
        self._epoch, self._yielded = state["epoch"], state["yielded"]
        self._it.close()
        self._it = iter(self._make(self._epoch))
        self._it.set_state(state["inner"])


class _EpochsDataset(grain.IterDataset):
    def __init__(self, make_epoch, process_index: int):
        super().__init__()
        self._make, self._process = make_epoch, process_index

    def __iter__(self):
        return _Epochs(self._make, self._process)


def _allgather_json(value, index: int, count: int) -> list:
    """Every process's JSON-able ``value``, in process order (a collective over the JAX processes). Shards
    simulated in one process (tests) keep their own entry only."""
    import jax

    if jax.process_count() == 1:
        return [value if i == index else None for i in range(count)]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int64))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(rows[i][:int(sizes[i][0])]).decode()) for i in range(count)]


def _release(ref):
    it = ref()
    if it is not None:
        it.close()


class StreamIterator:
    """The per-process batch iterator; its state is every process's (see the module docstring)."""

    def __init__(self, it: grain.DatasetIterator, shard_index: int, shard_count: int):
        self._it, self._index, self._count = it, shard_index, shard_count
        # grain's read-ahead threads are stopped, and its iterators freed, before the interpreter tears down the
        # modules their __del__ uses (else each prints an ignored AttributeError at exit)
        atexit.register(_release, weakref.ref(self))

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self):
        if self._it is not None:
            self._it.close()
            self._it = None
        gc.collect()

    def get_state(self) -> dict:
        return {"mode": "stream", "processes": _allgather_json(self._it.get_state(), self._index, self._count)}

    def set_state(self, state: dict):
        if not isinstance(state, dict) or state.get("mode") != "stream":
            raise ValueError("the checkpoint's data position was saved by a prepared-dataset run, not by "
                             "config.data.mode='stream'")
        saved = state["processes"]
        if len(saved) != self._count:
            raise ValueError(f"the checkpoint's data position was saved by {len(saved)} processes; streaming mode "
                             f"resumes on the same number of processes (now {self._count})")
        if saved[self._index] is None:
            raise ValueError(f"the checkpoint holds no data position for process {self._index}")
        self._it.set_state(saved[self._index])


class StreamPipeline:
    """Iterable of per-host batches read straight from ``files`` (same batch dict as ``PairPipeline``).

    ``iter(pipeline)`` returns a :class:`StreamIterator`. ``records_read``: the valid records this process
    has read so far (its share, plus what the shuffle window and the read-ahead hold).
    """

    def __init__(self, files, tokenizer, *, global_batch_size: int, max_query_len: int = 64,
                 max_passage_len: int = 256, num_negatives: int = 0, shuffle_window: int = 10_000, seed: int = 0,
                 shard_index: int = 0, shard_count: int = 1, skip_bad: bool = False, instruction: str | None = None,
                 query_template: str = DEFAULT_QUERY_TEMPLATE, add_eos: bool = True, prefetch_batches: int = 4):
        if global_batch_size <= 0 or global_batch_size % shard_count:
            raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                             f"shard_count={shard_count}")
        if shuffle_window < 1:
            raise ValueError(f"config.data.shuffle_window={shuffle_window} must be >= 1 (1: no shuffle)")
        self.files = expand_inputs(files)
        if len(self.files) >= shard_count:
            self.my_files = [(i, f) for i, f in enumerate(self.files) if i % shard_count == shard_index]
            self.stride = (0, 1)
        else:
            self.my_files, self.stride = list(enumerate(self.files)), (shard_index, shard_count)
        self.local_batch_size = global_batch_size // shard_count
        self.shard_index, self.shard_count = shard_index, shard_count
        self._window, self._seed, self._negatives, self._skip_bad = shuffle_window, seed, num_negatives, skip_bad
        self._prefetch = prefetch_batches
        self._counter = Counter()
        self._to_arrays = PairArrays(tokenizer, max_query_len=max_query_len, max_passage_len=max_passage_len,
                                     num_negatives=num_negatives, instruction=instruction,
                                     query_template=query_template, add_eos=add_eos)

    @property
    def records_read(self) -> int:
        return self._counter.count

    def describe(self) -> str:
        how = (f"{len(self.my_files)} of {len(self.files)} files" if self.stride[1] == 1 else
               f"records {self.stride[0]} mod {self.stride[1]} of {len(self.files)} file(s)")
        return f"streaming {how}, shuffle window {self._window}"

    def _epoch(self, epoch: int) -> grain.IterDataset:
        order = np.random.default_rng(_seed(self._seed, epoch)).permutation(len(self.my_files))
        files = [FilePairs(self.my_files[i][1], file_id=self.my_files[i][0], epoch=epoch, seed=self._seed,
                           stride=self.stride, num_negatives=self._negatives, skip_bad=self._skip_bad,
                           counter=self._counter) for i in order]
        ds = files[0] if len(files) == 1 else gx.InterleaveIterDataset(files, cycle_length=min(CYCLE_LENGTH,
                                                                                                 len(files)))
        if self._window > 1:
            ds = gx.WindowShuffleIterDataset(ds, window_size=self._window,
                                             seed=_seed(self._seed, epoch, self.shard_index) % (1 << 31))
        return ds

    def dataset(self) -> grain.IterDataset:
        ds = _EpochsDataset(self._epoch, self.shard_index)
        ds = ds.batch(self.local_batch_size, drop_remainder=True, batch_fn=list).map(self._to_arrays)
        return gx.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=self._prefetch) if self._prefetch else ds

    def __iter__(self) -> StreamIterator:
        return StreamIterator(iter(self.dataset()), self.shard_index, self.shard_count)
