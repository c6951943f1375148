"""Directories written by ``datasets.Dataset.save_to_disk``: Arrow streams listed in ``state.json``.

A ``DatasetDict`` directory (``dataset_dict.json``) holds several splits; the error names one to use.
"""

from __future__ import annotations

import json
import posixpath

from jobs.errors import InputError
from jobs.io.storage import Storage

STATE_FILE = "state.json"
DATASET_DICT_FILE = "dataset_dict.json"


def saved_dataset_files(storage: Storage) -> list[str] | None:
    """The data files of the saved dataset at ``storage``, in order; None when it is not one."""
    fs, root = storage.fs, storage.root
    if fs.exists(posixpath.join(root, DATASET_DICT_FILE)):
        splits = json.loads(storage.read_bytes(DATASET_DICT_FILE)).get("splits", [])
        raise InputError(
            f"{storage.url()} is a DatasetDict; point `input` at one split, e.g. {storage.url(splits[0])}"
            if splits
            else f"{storage.url()} is a DatasetDict with no splits"
        )
    if fs.exists(posixpath.join(root, STATE_FILE)):
        state = json.loads(storage.read_bytes(STATE_FILE))
        return [posixpath.join(root, entry["filename"]) for entry in state.get("_data_files", [])]
    return None
