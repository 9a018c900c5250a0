"""What a built pairs dataset folder holds besides its ArrayRecord shards: TFDS's description files
(``dataset_info.json``, ``features.json``: ``tfds.builder_from_directory(folder)`` reads the folder) and our
``metadata.json`` (the sources' fingerprints, the build options, per-split negatives stats, the skipped
records and ``data_digest``, the hash of the records in their stored order).
"""
import dataclasses
import json
import os
from typing import Sequence

import tensorflow_datasets as tfds
from etils import epath

from bitembed_jax.data import records

FORMAT = "bitembed-pairs-v1"  # marks folders this package built (and may therefore replace)
METADATA_FILE = "metadata.json"  # where tfds writes ``info.metadata``
DATASET_NAME = "text_pairs"
FILE_FORMAT = "array_record"


def pair_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "query": tfds.features.Text(),
        "positive": tfds.features.Text(),
        "negatives": tfds.features.Sequence(tfds.features.Text()),
    })


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return bytes((tag << 3 | 2,)) + _varint(len(payload)) + payload


_KEYS = {name: _field(1, name.encode()) for name in ("negatives", "positive", "query")}


def _text_feature(name: str, values) -> bytes:
    """One entry of tf.train.Features' map: key ``name`` -> Feature{bytes_list{value: ...}}."""
    bytes_list = b"".join([_field(1, v.encode("utf-8")) for v in values])
    return _field(1, _KEYS[name] + _field(2, _field(1, bytes_list)))


def serialize_pair(query: str, positive: str, negatives) -> bytes:
    """The tf.train.Example TFDS stores for a pair (``pair_features``), written directly: TFDS's encoder runs at
    ~2k pairs/s. Map entries in sorted key order, as protobuf's deterministic serialization writes them, so
    every worker stores a pair as the same bytes (tests check the bytes against TFDS's serializer)."""
    return _field(1, _text_feature("negatives", negatives) + _text_feature("positive", (positive,))
                  + _text_feature("query", (query,)))


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """TFDS's file name for a shard (its default ``{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}``)."""
    return f"{DATASET_NAME}-{split}.{FILE_FORMAT}-{shard:05d}-of-{num_shards:05d}"


def write_info(out_dir: str, shard_lengths: dict[str, list[int]], num_bytes: dict[str, int], metadata: dict):
    """Write TFDS's files and ``metadata.json`` (last, through ``info.metadata``) into ``out_dir``."""
    identity = tfds.core.dataset_info.DatasetIdentity(
        name=DATASET_NAME, version=tfds.core.Version("1.0.0"), data_dir=str(out_dir),
        module_name="bitembed_jax.data.tfds_builder", config_name="pairs")
    info = tfds.core.DatasetInfo(
        builder=identity,
        description="(query, positive passage, hard negatives) pairs for contrastive embedding training",
        features=pair_features(),
        # order is randomised at read time by the pipeline; keeping input order makes builds inspectable
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(metadata))
    info.set_file_format(FILE_FORMAT)
    template = lambda split: tfds.core.naming.ShardedFileTemplate(  # noqa: E731
        data_dir=epath.Path(out_dir), dataset_name=DATASET_NAME, split=split, filetype_suffix=FILE_FORMAT)
    info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes[split],
                            filename_template=template(split))
        for split, lengths in shard_lengths.items()]))
    info.write_to_directory(out_dir)


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    path: str
    count: int  # records written, all splits together
    splits: dict[str, int]
    skipped: int
    skip_reasons: tuple[str, ...]
    data_digest: str = ""


def load_metadata(out_dir: str) -> dict:
    """The build record of ``out_dir``; FileNotFoundError if no dataset was built there."""
    path = epath.Path(out_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no prepared dataset in {out_dir} (missing {METADATA_FILE})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by build_dataset (format {meta.get('format')!r})")
    return meta


def summary_of(out_dir: str) -> BuildSummary:
    meta = load_metadata(out_dir)
    splits = {name: s["count"] for name, s in meta["splits"].items()}
    return BuildSummary(str(out_dir), sum(splits.values()), splits, meta["skipped"], tuple(meta["skip_reasons"]),
                        meta.get("data_digest", ""))


def needs_rebuild(out_dir: str, files: Sequence[str], *, skip_bad: bool = False, max_negatives: int | None = None,
                  validation_fraction: float = 0.0, seed: int = 0) -> str | None:
    """Why ``out_dir`` does not match the local ``files`` and the build options, or None if it does."""
    try:
        meta = load_metadata(out_dir)
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    paths = records.check_files(files)
    if [s["path"] for s in meta["sources"]] != paths:
        return "the list of input files changed"
    wanted = {"skip_bad": skip_bad, "max_negatives": max_negatives, "validation_fraction": validation_fraction,
              "seed": seed}
    if meta["options"] != wanted:
        return f"build options changed ({meta['options']} -> {wanted})"
    for old in meta["sources"]:
        st = os.stat(old["path"])
        if (st.st_size, st.st_mtime_ns) == (old["size"], old["mtime_ns"]):
            continue  # cheap check first; hash only files that look touched
        if records.file_fingerprint(old["path"])["sha256"] != old["sha256"]:
            return f"{old['path']} changed since the build"
    return None
