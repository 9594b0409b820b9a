"""Content fingerprints of evaluation data: what a cache key needs to know about the images it was computed on.

The fingerprint hashes the pixels exactly as the model sees them (decoded, resized, cropped, on 8-bit levels),
the labels and the sample ids, so two trees with the same layout but other pixels, or the same files at another
resolution, never share a fingerprint. In-memory datasets hash their uint8 tensor directly; file datasets are
decoded once (about one extra clean pass over the data). The result is memoised on the dataset object.
"""

from __future__ import annotations

import hashlib

import numpy as np
from torch.utils.data import DataLoader, Dataset

from satlab.data.common import TensorImages, labels_and_ids, quantize_8bit

_ATTR = "_satlab_fingerprint"


def data_fingerprint(ds: Dataset, batch_size: int = 256, num_workers: int = 0) -> str:
    """Hex digest (16 chars) of a satlab dataset's pixels as loaded, labels and sample ids."""
    cached = getattr(ds, _ATTR, None)
    if cached is not None:
        return cached
    labels, ids = labels_and_ids(ds)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    if isinstance(ds, TensorImages):
        digest.update(str(tuple(ds.images.shape)).encode())
        digest.update(ds.images.contiguous().numpy().tobytes())
    else:
        for x, _, _ in DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False):
            digest.update(str(tuple(x.shape[1:])).encode())
            digest.update(quantize_8bit(x).contiguous().numpy().tobytes())
    value = digest.hexdigest()[:16]
    try:
        setattr(ds, _ATTR, value)
    except AttributeError:  # a dataset type that refuses attributes: recomputed next time
        pass
    return value

