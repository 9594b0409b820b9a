"""The SAT engine's two phases, each a small LightningModule run by one `trainer.predict`, and the datasets
they read (see `satlab.sat.engine` for how a job uses them):

    SourcePass   phase 1, one source: clean correctness, ONE attack of the images it classifies correctly (kept
                 by position), its own column
    TargetPass   phase 2, one block of targets: every source's images on X_AB
    CleanPass    clean correctness of targets without their own row (a tile's targets)

Results go into boolean arrays by dataset position; with several devices each rank leaves its arrays in a file
and the engine ORs them. Batches are fixed (`Batches`), so every device and run sees the same ones.
"""

from __future__ import annotations

import logging
import time
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import Dataset, default_collate

from satlab.attacks import Attack
from satlab.data import LabeledDataset, labels_and_ids
from satlab.data.pixels import DecodeReport
from satlab.sat.cache import from_stored, to_stored
from satlab.utils import atomic_path

log = logging.getLogger(__name__)


def sample_seeds(seed: int, source: str, sample_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample random-start seeds: a function of (run seed, source model, sample id) only."""
    base = zlib.crc32(f"{seed}:{source}".encode())
    return (sample_ids.to(torch.int64).cpu() * 1_000_003 + base) % (2**62)


class Batches(Dataset):
    """The evaluation data in fixed batches: item b = (images, labels, sample ids, positions) of samples
    b*size .. (b+1)*size-1, so every device and run sees the same batches (several devices take every k-th);
    with `positions`, of those positions only (in increasing order), `size` at a time.

    Images are uint8 [B,3,R,R] slices of the decoded pixels when the data has them (`LabeledDataset.pixels`:
    4x less to copy and move than float32; the steps convert them on the device, `from_stored`), else the items'
    float32 images, decoded on access.
    """

    def __init__(self, data: Dataset, size: int, positions: np.ndarray | None = None) -> None:
        self.data, self.size = data, size
        self.positions = None if positions is None else np.sort(np.asarray(positions, dtype=np.int64))
        self.pixels = data.pixels() if isinstance(data, LabeledDataset) else None
        if self.pixels is not None:
            labels, ids = labels_and_ids(data)
            self.labels, self.ids = torch.from_numpy(labels), torch.from_numpy(ids)

    def __len__(self) -> int:
        total = len(self.data) if self.positions is None else len(self.positions)  # type: ignore[arg-type]
        return -(-total // self.size)

    def __getitem__(self, b: int) -> Any:
        if self.positions is not None:
            at = self.positions[b * self.size:(b + 1) * self.size]
            if self.pixels is None:
                return default_collate([(*self.data[i], i) for i in at])
            x = self.pixels[torch.from_numpy(at)] if isinstance(self.pixels, torch.Tensor) else self.pixels[at]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))  # fancy indexing: a copy
            where = torch.from_numpy(at)
            return x, self.labels[where], self.ids[where], where
        start, stop = b * self.size, min((b + 1) * self.size, len(self.data))  # type: ignore[arg-type]
        if self.pixels is None:
            return default_collate([(*self.data[i], i) for i in range(start, stop)])
        x = self.pixels[start:stop]
        x = x.clone() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))  # a copy: not the map's
        return x, self.labels[start:stop], self.ids[start:stop], torch.arange(start, stop)


class AdversarialBatches(Dataset):
    """Phase 2's batches: the stored images of several sources at the positions a block of targets needs,
    source after source, `size` at a time (a batch mixes sources). Item b = (images, labels, source, position).

    Args:
        images: per source, its images [S,C,H,W] (memory-mapped); labels: [S].
        items: [K,2] (source index, position), sorted by source then position.
    """

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray, items: np.ndarray, size: int) -> None:
        self.images, self.labels, self.items, self.size = images, labels, items, size

    def __len__(self) -> int:
        return -(-len(self.items) // self.size)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, ...]:
        chunk = self.items[b * self.size:(b + 1) * self.size]
        src, pos = chunk[:, 0], chunk[:, 1]
        x = np.concatenate([self.images[s][pos[src == s]] for s in np.unique(src)])  # one read per source
        return (torch.from_numpy(x), torch.from_numpy(self.labels[pos]), torch.from_numpy(src),
                torch.from_numpy(pos))


class RankShare(Dataset):
    """Every k-th item of `data` from the rank's index, for k forked DDP ranks; all items in one process. Each
    rank gets ceil(n / k) items (Lightning wants at least one batch per rank): the last ranks repeat items from
    the start, which compute the same results again. The rank is read inside the rank, when the loader asks."""

    def __init__(self, data: Dataset) -> None:
        self.data, self.shares = data, {}

    def share(self) -> list[int]:
        dist = torch.distributed
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if (rank, world) not in self.shares:
            n = len(self.data)  # type: ignore[arg-type]
            self.shares[rank, world] = [(rank + world * k) % n for k in range(-(-n // world))] if n else []
        return self.shares[rank, world]

    def __len__(self) -> int:
        return len(self.share())

    def __getitem__(self, i: int) -> Any:
        return self.data[self.share()[i]]


class Phase(pl.LightningModule):
    """A phase's step: models in eval mode (channels_last on CUDA, bf16 autocast with `amp`), results written
    into boolean arrays (`outputs`). Several devices: each rank leaves its arrays in `spill`; the engine ORs
    them (a rank leaves False where it had no batch)."""

    def __init__(self, models: Sequence[nn.Module], amp: bool) -> None:
        super().__init__()
        self.models = nn.ModuleList(models).eval()
        self.amp = amp
        self.spill = ""
        self.clock = {"wait_s": 0.0, "transfer_s": 0.0, "compute_s": 0.0}  # see `on_before_batch_transfer`
        self._mark = time.perf_counter()

    def outputs(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def on_predict_start(self) -> None:
        if self.trainer.strategy.root_device.type == "cuda":
            self.models.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._mark = time.perf_counter()

    # Where the pass's time goes, batch by batch: waiting for the loader's next batch (decoding on access, reading
    # stored images), moving it to the device (on CUDA with pinned memory the copy is asynchronous: only issuing it
    # is counted here, the copy itself in compute) and the step (the models' work; it ends by reading results back,
    # so on CUDA it includes the device's time).

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self._tick("wait_s")
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self._tick("transfer_s")
        return batch

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._tick("compute_s")

    def _tick(self, what: str) -> None:
        now = time.perf_counter()
        self.clock[what] += now - self._mark
        self._mark = now

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch as the models see it: uint8 levels converted here, on the device (`from_stored`), in the
        trainer's input precision, channels_last on CUDA."""
        return self.layout(self.trainer.precision_plugin.convert_input(from_stored(x)))

    def on_predict_end(self) -> None:
        if self.trainer.world_size > 1:
            with atomic_path(Path(self.spill) / f"rank{self.trainer.global_rank}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **self.outputs())

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def cast(self, x: torch.Tensor) -> Any:
        """bf16 autocast (with `amp`): it lowers matmul/conv-like ops only, so images and rounding stay fp32."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()


class SourcePass(Phase):
    """Phase 1 for one source: clean correctness [S], the attack of the images it classifies correctly (written
    into `images` by position) and whether they fool the source itself [S]. With `only` [S] bool, just the images
    it marks are attacked (a map at a stated precision attacks the first images of its order)."""

    def __init__(self, model: nn.Module, name: str, attack: Attack, seed: int, images: np.ndarray, amp: bool,
                 only: np.ndarray | None = None) -> None:
        super().__init__([model], amp)
        self.name, self.attack, self.seed, self.images, self.only = name, attack, seed, images, only
        self.correct = np.zeros(len(images), dtype=bool)
        self.fooled = np.zeros(len(images), dtype=bool)

    def outputs(self) -> dict[str, np.ndarray]:
        return {"correct": self.correct, "fooled": self.fooled}

    def predict_step(self, batch: Any, batch_idx: int) -> dict:
        x, y, ids, pos = batch
        x, model, p = self.as_input(x), self.models[0], pos.cpu().numpy()
        with self.cast(x):
            with torch.inference_mode():
                correct = model(x).argmax(1) == y
            self.correct[p] = correct.cpu().numpy()
            if self.only is not None:
                correct = correct & torch.from_numpy(self.only[p]).to(correct.device)
            keep = correct.nonzero().squeeze(1)
            if not keep.numel():
                return {}
            x_adv = self.attack(model, x[keep], y[keep], sample_seeds(self.seed, self.name, ids[keep]))
            at = p[keep.cpu().numpy()]
            self.images[at] = to_stored(x_adv, self.images.dtype)
            with torch.inference_mode():
                self.fooled[at] = (model(x_adv).argmax(1) != y[keep]).cpu().numpy()
        return {}  # results are written into the arrays by position


class CleanPass(Phase):
    """Clean correctness [T,S] of targets whose own row is not in the cache (a tile's targets)."""

    def __init__(self, models: Sequence[nn.Module], n_samples: int, amp: bool) -> None:
        super().__init__(models, amp)
        self.correct = np.zeros((len(models), n_samples), dtype=bool)

    def outputs(self) -> dict[str, np.ndarray]:
        return {"correct": self.correct}

    def predict_step(self, batch: Any, batch_idx: int) -> dict:
        x, y, _, pos = batch
        x = self.as_input(x)
        with self.cast(x), torch.inference_mode():
            for j, model in enumerate(self.models):
                self.correct[j, pos.cpu().numpy()] = (model(x).argmax(1) == y).cpu().numpy()
        return {}


class TargetPass(Phase):
    """Phase 2 for one block of targets: fooled [sources, targets, S] on X_AB for the pairs in `need`.

    Args:
        models: the block's targets; correct: their clean correctness [T,S];
        need: [sources, T] which pairs to evaluate; n_samples: S.
        window: for a map at a stated precision, (start, stop, rank): pair (a, j) is evaluated on the images whose
            place in the map's order (`rank` [S]) is in [start[a, j], stop[a, j]); None: on every image.
    """

    def __init__(self, models: Sequence[nn.Module], correct: np.ndarray, need: np.ndarray, amp: bool,
                 window: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__(models, amp)
        self.correct, self.need, self.window = correct, need, window
        self.fooled = np.zeros((len(need), len(models), correct.shape[1]), dtype=bool)

    def outputs(self) -> dict[str, np.ndarray]:
        return {"fooled": self.fooled}

    def predict_step(self, batch: Any, batch_idx: int) -> dict:
        x, y, src, pos = batch
        x, s, p = self.as_input(x), src.cpu().numpy(), pos.cpu().numpy()
        with self.cast(x), torch.inference_mode():
            for j, model in enumerate(self.models):
                mask = self.correct[j, p] & self.need[s, j]
                if self.window is not None:
                    start, stop, rank = self.window
                    mask &= (start[s, j] <= rank[p]) & (rank[p] < stop[s, j])
                if mask.any():
                    on = torch.from_numpy(mask).to(x.device)
                    self.fooled[s[mask], j, p[mask]] = (model(x[on]).argmax(1) != y[on]).cpu().numpy()
        return {}


class EngineProgress(TQDMProgressBar):
    """A progress bar that says what the pass does ("attack resnet18")."""

    def __init__(self) -> None:
        super().__init__()
        self.label = "SAT pass"

    @property
    def predict_description(self) -> str:
        return self.label


# ------------------------------------------------------------------------------------------ where the time went

INPUT_BOUND = 0.10  # a run whose models waited for data more than this share of the engine's time is input-bound


def engine_time(report: DecodeReport | None, clock: dict[str, dict[str, float]], images: int, engine_s: float,
                decoded_before: bool) -> dict[str, dict[str, Any]]:
    """summary.json's `engine_time`: the decode pass, then per kind of pass (attack, clean, evaluate: `clock`, summed
    from each `Phase.clock`) the seconds spent waiting for data, moving it to the device and in the models' steps,
    and the whole run's waiting share (the decode pass and the waits, over the engine's time, plus the decode pass
    when the task ran it before the engine: `decoded_before`)."""
    decode_s = report.seconds if report else 0.0
    engine_s += decode_s if decoded_before else 0.0
    decode = {"seconds": round(decode_s, 3), "images": images, "decodes": report.decodes if report else 0,
              "workers": report.workers if report else 0,
              "kept_in": report.where if report else "not decoded by the engine (in-memory images)"}
    phases = {k: {w: round(v, 3) for w, v in c.items()} for k, c in clock.items()}
    waited = decode_s + sum(c["wait_s"] for c in clock.values())
    share = waited / engine_s if engine_s > 0 else 0.0
    return {"decode": decode, **phases,
            "total": {"engine_s": round(engine_s, 3), "waiting_for_data_s": round(waited, 3),
                      "waiting_share": round(share, 4), "input_bound": share > INPUT_BOUND}}


def say_engine_time(path: dict[str, dict[str, Any]], workers: int) -> None:
    """The engine's closing line: where its time went, and what to change when the models waited for data."""
    total, decode = path["total"], path["decode"]
    steps = sum(c.get("compute_s", 0.0) for k, c in path.items() if k not in ("decode", "total"))
    line = (f"engine time {total['engine_s']:.1f} s: decode {decode['seconds']:.1f} s ({decode['decodes']} image(s) "
            f"decoded), models {steps:.1f} s, waiting for data {100 * total['waiting_share']:.0f} % (decode included)")
    if total["input_bound"]:
        log.warning("%s: input-bound (over %.0f %%): raise sat.num_workers (now %d; at most the cores), keep "
                    "sat.resume=true so that the decoded images are reused from the cache, and put paths.cache_dir "
                    "on a local disk", line, 100 * INPUT_BOUND, workers)
    else:
        log.info("%s", line)
