"""Small helpers shared by every stage: the user-facing error, stable hashing and atomic file writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class SatlabError(Exception):
    """A problem with the user's input. The CLI prints its message as one line and exits with status 2."""


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


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """Hex digest of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


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
