"""A prepared dataset read where it lies (a local folder, a shared mount, or ``gs://``), and a count of the
records this process actually read from it.

The dataset folder is what ``build_dataset`` (or ``bitembed-jax data build``) writes. Its small files
(metadata.json, dataset_info.json) go through etils.epath (gcsfs for ``gs://``); its ArrayRecord shards are
opened by array_record's own reader, which reads ``gs://`` natively (riegeli over google-cloud-cpp), so
nothing is copied to the host.
"""
import atexit
import json
import os
import threading

from etils import epath

from bitembed_jax.data.dataset_record import METADATA_FILE

# a folder: every process writes there which records it read (tests and bench/data_pod_read.py check the shares)
READS_ENV = "BITEMBED_DATA_READS"


def is_prepared(data_dir: str) -> bool:
    """Whether ``data_dir`` holds a finished dataset (its metadata.json is written last)."""
    return bool(data_dir) and (epath.Path(data_dir) / METADATA_FILE).exists()


class CountingSource:
    """A random-access source that counts the records read through it (thread-safe: grain reads in threads).

    With ``$BITEMBED_DATA_READS`` set to a folder, it also keeps the indices and writes them at exit to
    ``FOLDER/process-I.json``, so a test can check that the processes' reads are disjoint shares.
    """

    def __init__(self, source, process_index: int = 0):
        self._source = source
        self._lock = threading.Lock()
        self.count = 0
        self.process_index = process_index
        folder = os.environ.get(READS_ENV)
        self._indices = [] if folder else None
        if folder:
            atexit.register(self._write, os.path.join(folder, f"process-{process_index}.json"))

    def __getstate__(self):
        # grain's worker processes get a copy: it counts there, unseen here (training reads in-process threads)
        return {"_source": self._source, "process_index": self.process_index}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock(), count=0, _indices=None)

    def __len__(self):
        return len(self._source)

    def _note(self, indices):
        with self._lock:
            self.count += len(indices)
            if self._indices is not None:
                self._indices.extend(int(i) for i in indices)

    def __getitem__(self, index):
        self._note([index])
        return self._source[index]

    def _write(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"process": self.process_index, "count": self.count, "indices": sorted(self._indices)}, f)
