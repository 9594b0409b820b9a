"""The data stage: each dataset function returns a `DatasetSplits` whose items are
`(image float32 [3,R,R] on 8-bit levels, label int, sample_id int)`.

The dataset functions live in their modules (`satlab.data.digits.digits`, `satlab.data.folders.imagenet`,
`satlab.data.folders.imagefolder`, `satlab.data.flowers.flowers102`, `satlab.data.shapes.shapes`,
`satlab.data.torchvision_sets.torchvision_dataset`, which reads its files through `satlab.data.torchvision_files`)
and are not re-exported here, so that
the module `satlab.data.digits` is not shadowed by the function of the same name (Hydra's `_target_`).
"""

from satlab.data.common import DatasetSplits, LabeledDataset, balanced_positions, labels_and_ids
from satlab.data.fingerprint import data_fingerprint

__all__ = ["DatasetSplits", "data_fingerprint", "LabeledDataset", "balanced_positions", "labels_and_ids"]
