"""Small helpers shared by every stage: the user-facing error, stable hashing, atomic file writes and the
cache-file helpers (writable-dir check, free space, per-file checksums, per-file locks, moving a damaged file
aside)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

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
def atomic_path(path: str | os.PathLike, checksum: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block finishes without error.

    A crash or an exception therefore never leaves a half-written result file behind. The file gets the mode
    a plain `open(path, "w")` would give (0o666 minus the umask), not mkstemp's private 0o600; folders are
    made by `mkdir`, which applies the umask itself. With `checksum`, the file's SHA-256 is written beside it
    first (`<name>.sha256`, sha256sum's format), so a reader can tell a damaged cache file (`checksum_problem`).
    A full disk (or quota) becomes one SatlabError naming the folder, with the temporary file removed.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        tmp_path.chmod(0o666 & ~current_umask())
        if checksum:  # before the file: a crash in between leaves a checksum that no older file matches
            write_text(checksum_path(path), f"{file_digest(tmp_path)}  {path.name}\n")
        os.replace(tmp_path, path)
        if checksum:
            _remember_verified(path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise SatlabError(no_space_message(path.parent)) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def no_space_message(folder: str | os.PathLike, needed: int | None = None, setting: str | None = None) -> str:
    """The one line for a folder whose disk is full (or would be): what is free, what is needed, what to do."""
    try:
        free = f"{human_bytes(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = f", about {human_bytes(needed)} needed" if needed is not None else ""
    where = setting or "paths.cache_dir (or paths.output_dir)"
    return f"no space left on the device of '{folder}' ({free}{need}); free some space there or set {where} to a " \
           "folder on a disk with room"


def check_free_space(folder: str | os.PathLike, needed: int, what: str, setting: str = "paths.cache_dir") -> None:
    """SatlabError before any work when the disk of `folder` has fewer than `needed` bytes free for `what`."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if needed > 0 and shutil.disk_usage(probe).free < needed:
        raise SatlabError(f"{what}: {no_space_message(probe, needed, setting)}")


def reserve(path: str | os.PathLike) -> None:
    """Allocate the disk blocks of the (sparse) file `path` now, so that writing it through a memory map can never
    die of SIGBUS on a full disk: a full disk raises OSError (ENOSPC) here, before anything is written."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)  # glibc writes the blocks where the file system cannot
    finally:
        os.close(fd)


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the checksum of the cache file `path` is kept: `<name>.sha256` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex (read in 4 MiB blocks; ~1.5 GB/s on a core with SHA extensions)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[str, tuple[int, ...]] = {}  # path -> the (inode, size, mtime) of it and its checksum when verified


def _stamp(path: Path) -> tuple[int, ...]:
    data, check = path.stat(), checksum_path(path).stat()
    return data.st_ino, data.st_size, data.st_mtime_ns, check.st_ino, check.st_mtime_ns


def _remember_verified(path: Path) -> None:
    _VERIFIED[str(path)] = _stamp(path)


def checksum_problem(path: str | os.PathLike) -> str | None:
    """None when the file `path` matches the checksum written with it (`atomic_path(..., checksum=True)`), else
    what is wrong. Each version of a file is hashed once per process (a rewritten or touched file again).

    >>> with atomic_path(p, checksum=True) as tmp: tmp.write_bytes(b"x")
    >>> checksum_problem(p) is None
    True
    """
    path = Path(path)
    try:
        stamp = _stamp(path)
    except FileNotFoundError:
        return "no checksum beside it (written by an older satlab, or its .sha256 file was deleted)"
    if _VERIFIED.get(str(path)) == stamp:
        return None
    try:
        expected = checksum_path(path).read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return "its checksum file cannot be read"
    actual = file_digest(path)
    if actual != expected:
        return f"its bytes do not match the checksum written with it (sha256 {actual[:12]}, expected {expected[:12]})"
    _VERIFIED[str(path)] = stamp
    return None


def verified(path: str | os.PathLike, tries: int = 3, pause: float = 0.2) -> bool:
    """Whether the cache file `path` exists and matches its checksum; a file that does not is moved aside with
    a warning naming it (with its checksum), so the caller recomputes it and never uses it.

    Another process may be rewriting the file (its new checksum is written just before the new file replaces the
    old one), so a mismatch is damage only when it holds `tries` times, `pause` seconds apart, on the same version
    of the file and its checksum (a version that changes meanwhile is being rewritten: looked at again, up to 20
    times `tries`)."""
    path = Path(path)
    version, held = None, 0
    for _ in range(20 * tries):
        if not path.is_file():
            return False
        problem = checksum_problem(path)
        if problem is None:
            return True
        try:
            now = _stamp(path)
        except FileNotFoundError:
            now = None
        held = held + 1 if now == version else 1
        version = now
        if held >= tries:
            break
        time.sleep(pause)
    move_aside(path, problem)  # type: ignore[arg-type]
    return False


def read_array(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any) -> Any:
    """The .npy cache file `path` memory-mapped (read-only) when it matches its checksum (`verified`), `shape` and
    `dtype`; else None (absent; or damaged or of another shape: moved aside with a warning)."""
    import numpy as np

    if not verified(path):
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
            raise ValueError(f"{array.dtype} {array.shape}, expected {np.dtype(dtype)} {tuple(shape)}")
        return array
    except Exception as err:  # noqa: BLE001 - truncated files raise ValueError, OSError, ...
        move_aside(path, f"{type(err).__name__}: {err}")
        return None


@contextmanager
def new_array(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any) -> Iterator[Any]:
    """A writable memory-mapped .npy of `shape` and `dtype` (processes forked in the block write into it too) that
    replaces the cache file `path`, with its checksum, when the block ends without error (`atomic_path`). Its disk
    blocks are reserved first, so a full disk is one error here, never a SIGBUS while the block writes."""
    import numpy as np

    with atomic_path(path, checksum=True) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        reserve(tmp)
        yield array
        array.flush()
        del array


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
    """Rename a damaged cache file to `<name>.corrupt-<UTC time>` (its checksum file too) and say so in one
    warning naming it; it is then recomputed."""
    path = Path(path)
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
        where = f"moved aside to {target.name}"
    except OSError as err:
        where = f"could not be moved aside ({err.strerror or err}; delete it)"
    check = checksum_path(path)
    if check.exists():
        try:
            os.replace(check, check.with_name(f"{check.name}.corrupt-{stamp}"))
        except OSError:
            pass
    _VERIFIED.pop(str(path), None)
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


def read_cached_weights(model: Any, weights: str | os.PathLike,
                        fingerprint: Callable[[], str] | None = None) -> dict[str, Any] | None:
    """Load cached safetensors `weights` into `model` (an nn.Module) and return the info saved beside them
    (`<name>.json`); None when absent. Both files are checked against the checksums written with them; a pair
    written by an older satlab (no checksums) is kept only when `fingerprint()` (the loaded model's content key)
    equals the one its info recorded, and gets its checksums then. A damaged file is moved aside with a warning
    naming it, so the caller retrains."""
    from safetensors.torch import load_file

    weights = Path(weights)
    meta = weights.with_suffix(".json")
    if not (weights.is_file() and meta.is_file()):
        return None
    legacy = not (checksum_path(weights).exists() or checksum_path(meta).exists())
    files = (weights, meta)
    problem = None if legacy else next((f"{f.name}: {p}" for f in files if (p := checksum_problem(f))), None)
    info: Any = None
    if problem is None:
        try:
            info = json.loads(meta.read_text())
            if not isinstance(info, dict):
                raise ValueError("its info is not a JSON object")
            model.load_state_dict(load_file(str(weights)))
            if legacy and (fingerprint is None or info.get("fingerprint") != fingerprint()):
                raise ValueError("no checksums, and the weights do not match the fingerprint in their info")
        except Exception as err:  # noqa: BLE001 - truncated JSON, SafetensorError, a foreign state dict, ...
            problem = f"{type(err).__name__}: {str(err)[:200]}"
    if problem is not None:
        for f in files:
            move_aside(f, problem)
        return None
    if legacy:
        for f in files:
            write_text(checksum_path(f), f"{file_digest(f)}  {f.name}\n")
    return info


def write_cached_weights(model: Any, weights: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write `model`'s state dict as safetensors and `info` as JSON beside it, each atomic with its checksum
    (weights first)."""
    from safetensors.torch import save_file

    weights = Path(weights)
    with atomic_path(weights, checksum=True) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_path(weights.with_suffix(".json"), checksum=True) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
