"""Pretrained weights: where timm fetches a model's weights from, whether they are already cached, and the one
check that runs before any download.

timm resolves a pretrained cfg to one source (`timm.models._builder._resolve_pretrained_source`): a Hugging Face
hub repo (`hf_hub_id`; the file `hf_hub_filename`, else `model.safetensors` with `pytorch_model.bin` as the
fallback), or a plain `url` (torch hub's cache, `torch.hub.get_dir()/checkpoints/<file name>`), or a local file.
`pending_download(spec)` asks the same function and looks in those caches without any network call;
`check_downloads` then decides, once for the whole model set, before any model is built:

- nothing to fetch: silent;
- `HF_HUB_OFFLINE` set: refuse, naming every model whose weights are missing (the first 10 and a count) and what
  to do, instead of timm failing on the first after its retries;
- online: one quick TCP connection to each host the weights come from (3 s at most; skipped behind a proxy). A
  host that cannot be reached is refused the same way; otherwise one log line says how many models will download.

    >>> downloads = [d for d in map(pending_download, specs) if d is not None]
    >>> check_downloads(downloads)   # raises SatlabError offline / unreachable, logs one line otherwise
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from satlab.models.specs import ModelSpec
from satlab.utils import SatlabError

log = logging.getLogger(__name__)

HF_SAFE, HF_BIN = "model.safetensors", "pytorch_model.bin"  # timm's default file names on the hub
SHOWN = 10  # models named in the error; the rest are counted
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class Download:
    """Pretrained weights of one model that are not in the local cache."""

    model: str  # the model's name in the model set
    where: str  # 'hf-hub:timm/resnet50.a1_in1k' (timm's notation for a hub repo) or the url
    host: str  # the host the weights come from
    cache: str  # the cache folder they will be written to


def pretrained_source(spec: ModelSpec) -> tuple[str, Any, dict[str, Any]]:
    """timm's (source kind, location, pretrained cfg) of `spec`'s pretrained weights: kind 'hf-hub' (location: the
    repo, or (repo, file)), 'url', or 'file' | 'local-dir' | 'state_dict'. A model timm has no pretrained weights
    for -> SatlabError (timm would log a warning and go on with random weights)."""
    from timm.models import resolve_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source

    arch, _, tag = spec.timm_name.partition(".")
    cfg = resolve_pretrained_cfg(arch, pretrained_cfg=spec.model_args.get("pretrained_cfg") or tag or None,
                                 pretrained_cfg_overlay=spec.model_args.get("pretrained_cfg_overlay"))
    cfg_dict = cfg.to_dict()
    kind, location = _resolve_pretrained_source(cfg_dict)
    if not kind:
        raise SatlabError(
            f"model '{spec.name}': timm has no pretrained weights for '{spec.timm_name}' (it would be randomly "
            "initialised); set model_set.pretrained=false for random init, or give the model a checkpoint_path"
        )
    return kind, location, cfg_dict


def hub_files(location: Any, custom_load: Any = False) -> tuple[str, list[str]]:
    """(repo id with any '@revision', the files timm tries in order) for a hub location, as
    `timm.models._hub.load_state_dict_from_hf` tries them: the safetensors alternative first, then the file."""
    if isinstance(location, (list, tuple)):
        from timm.models._hub import _get_safe_alternatives

        repo, filename = location
        if filename.endswith(".safetensors") or custom_load == "hf":
            return repo, [filename]
        return repo, [*_get_safe_alternatives(filename), filename]
    return location, [HF_SAFE, HF_BIN]


def pending_download(spec: ModelSpec) -> Download | None:
    """The pretrained weights `spec` still needs from the network; None when it needs none (not pretrained, a
    checkpoint_path, a local file, or weights already in the Hugging Face / torch hub cache). No network call."""
    if not spec.pretrained or spec.checkpoint_path:
        return None
    kind, location, cfg = pretrained_source(spec)
    if kind == "hf-hub":
        from huggingface_hub import constants, try_to_load_from_cache

        repo, files = hub_files(location, cfg.get("custom_load", False))
        repo_id, _, revision = repo.partition("@")
        if any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision or None), str) for f in files):
            return None
        return Download(spec.name, f"hf-hub:{repo}", urlparse(constants.ENDPOINT).hostname or "",
                        str(constants.HF_HUB_CACHE))
    if kind == "url":
        import torch

        cache = Path(torch.hub.get_dir()) / "checkpoints"
        if (cache / os.path.basename(urlparse(location).path)).is_file():
            return None
        return Download(spec.name, str(location), urlparse(location).hostname or "", str(cache))
    return None  # a local file or state dict: nothing to fetch


def offline() -> bool:
    """Whether the Hugging Face hub is in offline mode (`HF_HUB_OFFLINE`, read by huggingface_hub on import)."""
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def reachable(host: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to `host`:443 opens within `timeout` seconds (or a proxy is configured, which
    this cannot test); else the reason, e.g. 'Name or service not known'."""
    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def check_downloads(downloads: Sequence[Download], probe: Callable[[str], str | None] = reachable) -> None:
    """Refuse, in one SatlabError naming every model, pretrained weights that cannot be fetched (offline, or a host
    that cannot be reached); otherwise log one line saying how many models will download their weights.

    Args:
        downloads: every model's missing weights (`pending_download`), for the whole model set.
        probe: tells whether a host can be reached (None) or why not; `reachable` by default.
    """
    if not downloads:
        return
    if offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        failed = {h: why for h in sorted({d.host for d in downloads}) if (why := probe(h)) is not None}
        if not failed:
            log.info("%d model(s) will download pretrained weights (%s) into %s", len(downloads),
                     _listed([d.model for d in downloads]), ", ".join(sorted({d.cache for d in downloads})))
            return
        reason = "; ".join(f"{h} cannot be reached ({why})" for h, why in failed.items())
        downloads = [d for d in downloads if d.host in failed]
    listed = _listed([f"{d.model} ({d.where})" for d in downloads])
    caches = ", ".join(sorted({d.cache for d in downloads}))
    raise SatlabError(
        f"pretrained weights of {len(downloads)} model(s) are not in the local cache and {reason}: {listed}; "
        f"fetch them on a machine with internet (e.g. python -c \"import timm; timm.create_model('<name>', "
        f"pretrained=True)\" for each) and copy its cache into {caches} here (set by HF_HOME, or TORCH_HOME for "
        "url weights), or give these models a checkpoint_path in the model set, or set model_set.pretrained=false "
        "for random init"
    )


def _listed(items: Sequence[str]) -> str:
    """The first SHOWN items, and how many more."""
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")
