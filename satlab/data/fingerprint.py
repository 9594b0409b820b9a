"""Content fingerprints of evaluation data: what a cache key needs to know about the images it was computed on.

The fingerprint hashes the pixels exactly as the model sees them (decoded, resized, cropped, on 8-bit levels),
the labels and the sample ids, so two trees with the same layout but other pixels, or the same files at another
resolution, never share a fingerprint. In-memory datasets hash their uint8 tensor directly; datasets decoded on
access (image files, torchvision's classes) are decoded once, in parallel, by this pass, which keeps the pixels
for every later pass (`satlab.data.pixels`: in the cache, or in memory). The result is memoised on the dataset.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from satlab.data.common import LabeledDataset, TensorImages, labels_and_ids, quantize_8bit
from satlab.data.pixels import CHUNK, DecodeReport, decode_pixels, persist_pixels

log = logging.getLogger(__name__)

_ATTR = "_satlab_fingerprint"
_REPORT = "_satlab_decode"


def data_fingerprint(ds: Dataset, num_workers: int | None = None, cache_dir: str | Path | None = None,
                     write: bool = True) -> str:
    """Hex digest (16 chars) of a satlab dataset's pixels as loaded, labels and sample ids.

    Args:
        ds: a satlab dataset (or a torch Subset of one: decoded through a DataLoader in this process, as before).
        num_workers: threads of the decode pass (None: the cores available).
        cache_dir: where the decoded images of a file dataset are kept for later passes and runs (None: memory).
        write: False: pixels that fit in memory are not written to the cache yet (`decode_pixels`); a later call
            with `cache_dir` (the engine's, the prediction pass's) writes them.
    """
    cached = getattr(ds, _ATTR, None)
    if cached is not None:
        report = decode_report(ds)
        if write and cache_dir is not None and report is not None:
            persist_pixels(ds, report)  # type: ignore[arg-type]
        return cached
    labels, ids = labels_and_ids(ds)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())

    def add(chunk: np.ndarray) -> None:  # one batch of CHUNK images, as the DataLoader pass hashed them
        digest.update(str(tuple(chunk.shape[1:])).encode())
        digest.update(np.ascontiguousarray(chunk).tobytes())

    if isinstance(ds, TensorImages):
        digest.update(str(tuple(ds.images.shape)).encode())
        digest.update(ds.images.contiguous().numpy().tobytes())
    elif isinstance(ds, LabeledDataset) and type(ds).decode is not LabeledDataset.decode:
        pixels, report = decode_pixels(ds, cache_dir, num_workers, add, write)
        ds.decoded = pixels
        setattr(ds, _REPORT, report)
        log.info("%s", report.line())
    else:
        for x, _, _ in DataLoader(ds, batch_size=CHUNK, num_workers=0, shuffle=False):
            add(quantize_8bit(x).numpy())
    value = digest.hexdigest()[:16]
    try:
        setattr(ds, _ATTR, value)
    except AttributeError:  # a dataset type that refuses attributes: recomputed next time
        pass
    return value


def decode_report(ds: Dataset) -> DecodeReport | None:
    """What the fingerprint's pass decoded and where it keeps the pixels; None when it decoded nothing."""
    return getattr(ds, _REPORT, None)
