"""Grain input pipeline: a built pairs dataset -> fixed-shape token batches for contrastive training.

Order of operations (all index-based, so the whole pipeline is a pure function of the step and the
iterator state is just a position):

  source -> shuffle(seed) -> drop the epoch remainder -> pick k negatives -> batch(local) ->
  this host's local batches -> repeat -> tokenize/pad

Global batch ``s`` of an epoch is the shuffled records ``[s*G, (s+1)*G)``; host ``h`` of ``n``
gets the contiguous slice ``[s*G + h*G/n, s*G + (h+1)*G/n)``, so the hosts' local batches are
disjoint and, concatenated in host order, form the global batch. Every epoch is reshuffled.

Hard negatives: ``num_negatives=k`` takes k of a record's own negatives (sampled per epoch); a record
with fewer repeats its list to fill k. A record with none cannot be filled, so the constructor raises
if the split has any such record (the build records the counts): train with ``num_negatives=0``
(in-batch negatives only) or add negatives to the data.
"""
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from bitembed_jax.data.dataset_record import load_metadata
from bitembed_jax.data.prepared import CountingSource
from bitembed_jax.data.tokenize import DEFAULT_QUERY_TEMPLATE, PairArrays


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class _PickNegatives(grain.transforms.RandomMap):
    """Decode a stored record and choose its ``k`` negatives with the per-element RNG grain provides."""

    def __init__(self, k: int):
        self.k = k

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        out = {"query": _text(element["query"]), "positive": _text(element["positive"])}
        if self.k:
            pool = [_text(n) for n in element["negatives"]]  # never empty: PairPipeline checks the build stats
            order = rng.permutation(len(pool))
            out["negatives"] = [pool[order[i % len(pool)]] for i in range(self.k)]
        return out


def _allow_unparsed_absl_flags() -> None:
    # grain 0.2.18's multiprocess prefetch reads an absl flag, which raises in programs that never
    # parse absl flags (anything not started by absl.app), when JAX is installed: google/grain#1355
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class PairPipeline:
    """Iterable of per-host batches from a dataset built by :func:`build_dataset`.

    Each batch is a dict of int32 numpy arrays (b = global_batch_size // shard_count)::

        query_ids, query_mask          (b, max_query_len)
        passage_ids, passage_mask      (b, max_passage_len)
        negative_ids, negative_mask    (b, num_negatives, max_passage_len)   only if num_negatives > 0

    ``iter(pipeline)`` returns a grain DatasetIterator: save ``it.get_state()`` with the model and
    ``it.set_state(state)`` on a fresh iterator to continue with exactly the same batches.

    Args (beyond the shapes above):
      data_dir: a folder written by ``build_dataset``, local or ``gs://``, read in place; ``split`` one of its
        splits. ``records_read`` counts the records this process has read from it (its share, plus read-ahead).
      tokenizer: a Hugging Face tokenizer object (``AutoTokenizer.from_pretrained(...)``).
      seed, shuffle: the record order is a seeded permutation, different every epoch.
      num_epochs: None repeats forever; a number ends the iterator after that many epochs.
      shard_index, shard_count: ``jax.process_index()``, ``jax.process_count()``; every host builds the
        same pipeline and keeps its own ``global_batch_size // shard_count`` rows of each global batch.
      instruction, query_template: queries become ``query_template.format(instruction=..., query=...)``
        when ``instruction`` is set; truncation keeps the head, so leave room for the instruction.
      add_eos: end every sequence with EOS (see :class:`Tokenize`).
      worker_count: grain worker processes for tokenization (0: threads in this process).
      read_threads, prefetch_batches: threads and read-ahead (in local batches) per process.
    """

    def __init__(self, data_dir: str, tokenizer, *, global_batch_size: int, max_query_len: int = 64,
                 max_passage_len: int = 256, num_negatives: int = 0, split: str = "train", seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                 instruction: str | None = None, query_template: str = DEFAULT_QUERY_TEMPLATE,
                 add_eos: bool = True, worker_count: int = 0, read_threads: int = 4, prefetch_batches: int = 8):
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
        if global_batch_size <= 0 or global_batch_size % shard_count:
            raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                             f"shard_count={shard_count}")
        if min(max_query_len, max_passage_len) < (2 if add_eos else 1):
            raise ValueError("max_query_len and max_passage_len must leave room for text (and EOS)")
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        if instruction is not None and "{query}" not in query_template:
            raise ValueError(f"query_template must contain '{{query}}', got {query_template!r}")
        stats = load_metadata(data_dir)["splits"]
        if split not in stats:
            raise ValueError(f"split {split!r} not in {data_dir} (has {sorted(stats)})")
        if num_negatives and stats[split]["without_negatives"]:
            raise ValueError(
                f"num_negatives={num_negatives} but {stats[split]['without_negatives']} of "
                f"{stats[split]['count']} records in {data_dir} [{split}] have no negatives; "
                "use num_negatives=0 (in-batch negatives only) or add negatives to those records")
        self.num_records = stats[split]["count"]
        self.steps_per_epoch = self.num_records // global_batch_size  # the epoch remainder is dropped
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_records} records in [{split}] is less than one global batch "
                             f"of {global_batch_size}")
        self.local_batch_size = global_batch_size // shard_count
        self._source = CountingSource(tfds.builder_from_directory(data_dir).as_data_source(split), shard_index)
        self._to_arrays = PairArrays(tokenizer, max_query_len=max_query_len, max_passage_len=max_passage_len,
                                     num_negatives=num_negatives, instruction=instruction,
                                     query_template=query_template, add_eos=add_eos)
        self._cfg = dict(global_batch_size=global_batch_size, max_query_len=max_query_len,
                         max_passage_len=max_passage_len, num_negatives=num_negatives, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
                         instruction=instruction, query_template=query_template, worker_count=worker_count,
                         read_threads=read_threads, prefetch_batches=prefetch_batches)

    @property
    def records_read(self) -> int:
        return self._source.count

    def dataset(self) -> grain.IterDataset:
        c = self._cfg
        ds = grain.MapDataset.source(self._source)
        if c["shuffle"]:
            ds = ds.shuffle(seed=c["seed"])
        ds = ds[:self.steps_per_epoch * c["global_batch_size"]]
        ds = ds.random_map(_PickNegatives(c["num_negatives"]), seed=c["seed"])
        ds = ds.batch(self.local_batch_size, drop_remainder=True, batch_fn=list)
        ds = ds[c["shard_index"]::c["shard_count"]]  # local batch h of each global batch
        ds = ds.repeat(c["num_epochs"]).map(self._to_arrays)
        # grain's default read-ahead (500 elements, here whole batches) would hold gigabytes of tokens
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=c["read_threads"],
                                                     prefetch_buffer_size=c["prefetch_batches"]))
        if c["worker_count"]:
            _allow_unparsed_absl_flags()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=c["worker_count"]))
        return it_ds

    def __iter__(self) -> grain.DatasetIterator:
        return iter(self.dataset())
