"""Small helpers shared by every stage: the user-facing error, stable hashing, atomic file writes and the
cache-file helpers (writable-dir check, per-file locks, moving a damaged file aside)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


class SatlabError(Exception):
    """A problem with the user's input. The CLI prints its message as one line and exits with status 2."""


def plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python containers (resolved); anything else unchanged."""
    if type(obj).__name__ in ("DictConfig", "ListConfig"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    return obj


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of dict order and of the Python process."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def state_dict_hash(state: dict[str, Any], length: int = 16) -> str:
    """Hex digest of a state dict: every tensor's name, dtype, shape and bytes, in sorted name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(f"{name}:{value!r}".encode())
    return digest.hexdigest()[:length]


def conf_dir() -> Path:
    """satlab's configs: shipped inside the package (`satlab/conf`, an installed wheel), else the repo's `conf/`."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if (packaged / "config.yaml").is_file() else here.parent / "conf"


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block finishes without error.

    A crash or an exception therefore never leaves a half-written result file behind. The file gets the mode
    a plain `open(path, "w")` would give (0o666 minus the umask), not mkstemp's private 0o600; folders are
    made by `mkdir`, which applies the umask itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write a JSON file atomically (sorted keys, indented)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame: Any, index: bool = False, **kwargs: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically; keyword arguments go to `DataFrame.to_csv`."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index, **kwargs)
    return Path(path)


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` as an existing folder we can write to (created if missing), else one SatlabError naming `what`.

    Run it before any expensive work, so a bad cache or output folder fails in a second, not after hours.
    """
    folder = Path(path)
    example = f" (e.g. {what}=$HOME/.cache/satlab)" if what.endswith("cache_dir") else ""
    hint = f"set {what} to a writable folder{example} or fix its permissions"
    if folder.exists() and not folder.is_dir():
        raise SatlabError(f"{what} '{folder}' is a file, not a folder; {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".satlab-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SatlabError(f"{what} '{folder}' is not a writable folder ({err.strerror or err}); {hint}") from None
    return folder


def move_aside(path: str | os.PathLike, problem: str) -> None:
    """Rename a damaged cache file to `<name>.corrupt-<UTC time>` and say so; it is then recomputed."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    try:
        os.replace(path, target)
        where = f"moved aside to {target.name}"
    except OSError as err:
        where = f"could not be moved aside ({err.strerror or err})"
    log.warning("damaged cache file %s (%s); %s, recomputing", path, problem, where)


@contextmanager
def file_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `<dir>/.<name>.lock` (the OS releases it if the process dies); yields True.

    Writers of one cache file take its lock, so two runs never compute the same file at once. With
    `wait=False` a lock held by another run yields False at once (do other work first); else the wait is
    announced on the console, and the caller usually finds the file written by the other run afterwards.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(f".{path.name}.lock")), mode=0o666)  # other users of a shared cache too
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            yield False
            return
        log.info("waiting for another run that is computing %s (%s)", what, path.name)
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def read_cached_weights(model: Any, weights: str | os.PathLike) -> dict[str, Any] | None:
    """Load cached safetensors `weights` into `model` (an nn.Module) and return the info saved beside them
    (`<name>.json`); None when absent. A damaged file is moved aside (warning), so the caller retrains."""
    from safetensors.torch import load_file

    weights = Path(weights)
    meta = weights.with_suffix(".json")
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except Exception as err:  # noqa: BLE001 - truncated JSON, ...
        move_aside(meta, f"{type(err).__name__}: {str(err)[:200]}")
        return None
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as err:  # noqa: BLE001 - a truncated file raises SafetensorError, a foreign one RuntimeError
        move_aside(weights, f"{type(err).__name__}: {str(err)[:200]}")
        return None
    return info


def write_cached_weights(model: Any, weights: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write `model`'s state dict as safetensors and `info` as JSON beside it (both atomic; weights first)."""
    from safetensors.torch import save_file

    weights = Path(weights)
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(weights.with_suffix(".json"), info)
