"""wandb at the edge: the jobs of one sweep share a wandb group and carry their overrides as config columns."""

import os
import re
import subprocess
import sys

from omegaconf import OmegaConf

from satlab.tasks.tracking import sweep_context, wandb_init_args


def test_single_run_has_no_sweep_context(tmp_path):
    cfg = OmegaConf.create({"logger": {"name": "wandb", "mode": "offline", "group": None}, "seed": 0})
    assert sweep_context() == {}
    args = wandb_init_args(cfg, "sat", tmp_path)
    assert args["group"] is None and "sweep" not in args["config"] and args["mode"] == "offline"
    cfg.logger.group = "mine"
    assert wandb_init_args(cfg, "sat", tmp_path)["group"] == "mine"


def test_sweep_jobs_share_a_wandb_group_with_their_overrides(tmp_path):
    env = {**os.environ, "SATLAB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "satlab.cli", "-m", "model_set=timm_tiny", "attack=fgsm", "logger=wandb",
         "dataset.samples_per_class=2", "trainer.enable_progress_bar=false", "sat.print_table=false",
         "attack.eps=0.03,0.1", "hydra.sweep.dir=sweep"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    groups, eps = set(), []
    for job in ("0", "1"):
        (log,) = (tmp_path / "sweep" / job / "wandb").glob("offline-run-*/*.wandb")
        blob = log.read_bytes().decode("latin-1")  # wandb's offline log stores strings verbatim
        groups |= set(re.findall(r"sweep:[\w./-]*sweep\b", blob))
        eps += re.findall(r'"attack\.eps":"([0-9.]+)"', blob)[:1]
    assert groups == {f"sweep:{tmp_path.name}/sweep"}
    assert eps == ["0.03", "0.1"]
