"""Models: specs from a model set, the pixel-space wrapper, the one builder (factory.py) and the lazy model set.

    specs.py      ModelSpec and the model-set config -> specs (names or timm filters, catalog, families)
    wrapper.py    PixelModel: [0,1] pixels -> the model's own resize and normalisation -> logits
    factory.py    build_model(spec, ...): timm architecture + weights (pretrained, checkpoint, seeded init)
    model_set.py  ModelSet: model i built when asked and released after; sources of weights
    hub.py        pretrained weights: where timm fetches them, whether cached, the one check before downloads
    archs.py      small Mixer-family variants registered with timm (the digits zoo's)

Nothing here imports the training layer: zoo training and fine-tuned runs are sources defined in satlab.train.
"""

import satlab.models.archs  # noqa: F401  (registers the digits zoo's small Mixer/ResMLP/ConvMixer with timm)
from satlab.models.model_set import ModelSet, Source, TimmSource
from satlab.models.specs import COMPONENTS, ModelSpec, model_specs

__all__ = ["COMPONENTS", "ModelSet", "ModelSpec", "Source", "TimmSource", "model_specs"]
