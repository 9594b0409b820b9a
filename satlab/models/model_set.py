"""A model set: the one way every task gets its models. Model i is built (or loaded, or trained) when asked,
and let go when the caller is done with it, so a set of hundreds of models never sits in memory at once.

Each model has a *source*, the object that knows where its weights come from:

    TimmSource     here: timm pretrained weights, a checkpoint file, or a seeded random init
    ZooSource      satlab.train.zoo: trained by satlab on the dataset's train split, cached by content
    TrainedSource  satlab.train.finetune: a model a `task=train` run fine-tuned (`model_set.trained_from`)

A source can `check()` what is knowable before any model is built (names, class counts, recipes), may say which
weights it would download (`download`: a TimmSource whose pretrained weights are not in the local cache), may
know its model's content key without building it (`stored_key`: stored beside cached weights or in a manifest),
may know its weights' size (`nbytes`: for the engine's memory budget), and `load()`s the model.
`ModelSet.check()` checks every source, then every pending download at once
(`satlab.models.hub.check_downloads`: offline, one error names them all). The set asks each source once and
remembers the keys (a key it has to compute is computed once, from the built model). `satlab.train.open_model_set`
opens a set from a model-set config.

    >>> models = ModelSet([TimmSource(spec, num_classes=10, resolution=32) for spec in specs])
    >>> models.check()                        # every model, before anything is built
    >>> keys = models.keys()                  # content keys (weights + preprocessing)
    >>> with models.use(0) as model:          # model 0 built; released at the end of the block
    ...     logits = model(images)
    >>> with models.use_block([1, 2]) as (a, b):  # several at once (the engine's block of targets)
    ...     agree = a(images).argmax(1) == b(images).argmax(1)
"""

from __future__ import annotations

import ctypes
import gc
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, Protocol, Sequence

from satlab.models.factory import build_model, check_arch, check_classes, module_bytes, weight_bytes
from satlab.models.hub import Download, check_downloads, pending_download, pretrained_source
from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.utils import SatlabError


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc's `malloc_trim`; nothing elsewhere), so that building models
    one after another does not ratchet the process's resident memory up."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Source(Protocol):
    """Where one model's weights come from. A source that may fetch weights from the network also has
    `download() -> Download | None`: what `load` would fetch (None: nothing, or already cached)."""

    spec: ModelSpec

    def check(self) -> None:
        """Raise SatlabError for what is wrong before anything is built, trained or downloaded."""

    def stored_key(self) -> str | None:
        """The model's content key (`PixelModel.fingerprint()`) when it is stored; None: build to know it."""

    def load(self) -> tuple[PixelModel, dict[str, Any]]:
        """The model (eval mode) and what to report about it (e.g. training info)."""


class TimmSource:
    """A timm model: pretrained weights, `spec.checkpoint_path`, or random init seeded by (seed, name)."""

    def __init__(self, spec: ModelSpec, num_classes: int | None, resolution: int, seed: int = 0) -> None:
        self.spec, self.num_classes, self.resolution, self.seed = spec, num_classes, resolution, seed

    def check(self) -> None:
        check_arch(self.spec.timm_name)
        if self.spec.pretrained and not self.spec.checkpoint_path:
            pretrained_source(self.spec)  # timm has pretrained weights for it
        if self.num_classes is not None:
            check_classes(self.spec, self.num_classes)

    def download(self) -> Download | None:
        """The pretrained weights not in the local cache (`satlab.models.hub.pending_download`)."""
        return pending_download(self.spec)

    def stored_key(self) -> str | None:
        return None

    def load(self) -> tuple[PixelModel, dict[str, Any]]:
        return build_model(self.spec, self.num_classes, self.resolution, self.seed), {}

    def nbytes(self) -> int | None:
        return weight_bytes(self.spec, self.num_classes)


class ReadySource:
    """A model already in memory (`ModelSet.from_models`): its key is computed from it."""

    def __init__(self, name: str, model: PixelModel) -> None:
        self.spec, self.model = ModelSpec(name, name), model

    def check(self) -> None:
        pass

    def stored_key(self) -> str | None:
        return None

    def load(self) -> tuple[PixelModel, dict[str, Any]]:
        return self.model, {}

    def nbytes(self) -> int | None:
        return module_bytes(self.model)


class ModelSet:
    """The models of a set, built one at a time (see the module docstring).

    At most one built model is kept between calls: the one whose key was just computed, so that asking for its
    key and then using it builds it once.
    """

    def __init__(self, sources: Sequence[Source]) -> None:
        names = [s.spec.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SatlabError(f"the model set lists {', '.join(dupes)} more than once; list each model once")
        self.sources = list(sources)
        self._keys: list[str | None] = [None] * len(self.sources)
        self._info: list[dict[str, Any]] = [{} for _ in self.sources]
        self._kept: tuple[int, PixelModel] | None = None
        self._checked: set[int] = set()  # models whose weights were hashed against their key

    @classmethod
    def from_models(cls, names: Sequence[str], models: Sequence[PixelModel]) -> "ModelSet":
        """A set of models already built (held in memory by the caller), e.g. in tests and notebooks."""
        return cls([ReadySource(n, m) for n, m in zip(names, models, strict=True)])

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def specs(self) -> list[ModelSpec]:
        return [s.spec for s in self.sources]

    @property
    def names(self) -> list[str]:
        return [s.spec.name for s in self.sources]

    def check(self) -> None:
        """Check every model before any is built (a bad name or class count fails in a second, not after hours),
        then every pretrained download at once (offline, one error names every model whose weights are missing).

        Raises SatlabError: the first failing model's message, naming the other models that fail too.
        """
        failed: list[tuple[str, str]] = []
        for source in self.sources:
            try:
                source.check()
            except SatlabError as err:
                failed.append((source.spec.name, str(err)))
        if failed:
            others = [name for name, _ in failed[1:]]
            shown = ", ".join(others[:10]) + (", ..." if len(others) > 10 else "")
            also = f" ({len(others)} more model(s) fail their checks too: {shown})" if others else ""
            raise SatlabError(failed[0][1] + also)
        check_downloads([d for s in self.sources if (d := getattr(s, "download", lambda: None)()) is not None])

    def key(self, i: int) -> str:
        """Model i's content key: stored, or computed once from the built model (which is then kept for `use`)."""
        if self._keys[i] is None:
            self._keys[i] = self.sources[i].stored_key()
        if self._keys[i] is None:
            self._kept = None  # one built model at a time
            self._kept = (i, self.load(i))
        return self._keys[i]  # type: ignore[return-value]

    def keys(self) -> list[str]:
        """Every model's content key, building only the models whose key is not stored (one at a time)."""
        return [self.key(i) for i in range(len(self))]

    def nbytes(self, i: int) -> int:
        """Bytes of model i's weights (parameters + buffers), without building it when its source can tell
        (`nbytes()`; else timm's architecture on the meta device, else the model is built to measure it)."""
        source = self.sources[i]
        size = source.nbytes() if hasattr(source, "nbytes") else weight_bytes(source.spec, None)
        if size is None:
            with self.use(i) as model:
                size = module_bytes(model)
        return size

    def info(self, i: int) -> dict[str, Any]:
        """What model i's source reported when it was loaded (e.g. zoo training: accuracy, cached, weights)."""
        return self._info[i]

    def load(self, i: int) -> PixelModel:
        """Model i, built now (or the one kept by `key`); the caller owns it."""
        if self._kept is not None and self._kept[0] == i:
            model, self._kept = self._kept[1], None
            return model
        model, info = self.sources[i].load()
        if i not in self._checked:  # the first load hashes the weights; a source gives the same weights again
            key = model.fingerprint()
            if self._keys[i] not in (None, key):
                raise SatlabError(f"model '{self.names[i]}': its weights do not match the key stored for them "
                                  f"({self._keys[i]} stored, {key} loaded); the cache or manifest was changed")
            self._keys[i], self._info[i] = key, info
            self._checked.add(i)
        return model

    @contextmanager
    def use(self, i: int) -> Iterator[PixelModel]:
        """Model i for the block; let go afterwards (its memory is freed unless the caller kept a reference)."""
        with self.use_block([i]) as models:
            yield models[0]

    @contextmanager
    def use_block(self, indices: Sequence[int]) -> Iterator[list[PixelModel]]:
        """The models `indices` for the block, built in order; let go together afterwards, the heap given back
        to the OS once (a model the set did not build, `from_models`, stays with its owner: nothing to free)."""
        models = [self.load(i) for i in indices]
        built = [weakref.ref(m) for i, m in zip(indices, models) if not isinstance(self.sources[i], ReadySource)]
        try:
            yield models
        finally:
            models.clear()  # the list is the caller's too: emptied, it keeps no model alive
            if any(alive() is not None for alive in built):
                gc.collect()  # a reference cycle inside a model (a full collection costs ~0.1 s: only then)
            if built:
                release_freed_memory()

    def with_model(self, name: str, model: PixelModel) -> "ModelSet":
        """This set and one more model, already built (e.g. a student trained by the task)."""
        return ModelSet([*self.sources, ReadySource(name, model)])
