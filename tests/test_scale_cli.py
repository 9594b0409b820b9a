"""Tiles from the command line: a Hydra submitit_local sweep over `sat.tile` of `sat.tiles=2x2` (real submitit:
the jobs run in local processes it starts) then `sat.assemble=true` gives the records of one process; bad shard
input is one `satlab: error:` line (bad tiles and memory budgets: tests/test_bad_input.py). The commands themselves
run in the test process (`satlab_in_process`)."""

import numpy as np
import pandas as pd
import pytest

from satlab.sat.records import load_records

COMMON = ["experiment=smoke", "model_set=timm_tiny", "dataset.samples_per_class=2", "trainer.accelerator=cpu",
          "trainer.enable_progress_bar=false", "sat.print_table=false"]


def test_submitit_tile_sweep_then_assemble_equals_one_process(tmp_path, satlab_in_process):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    sweep = satlab_in_process(["-m", *COMMON, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=15",
                               f"hydra.sweep.dir={tmp_path / 'multirun'}", "sat.tiles=2x2", "sat.tile=range(4)",
                               cache], tmp_path)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    assert list((tmp_path / "multirun").glob(".submitit/*/*_submitted.pkl")), "not launched through submitit"
    # the jobs ran in other processes: each wrote the overview from the folders, the command printed where it is
    assert f"sweep overview: {tmp_path / 'multirun' / 'sweep_overview.md'}" in sweep.stdout
    table = pd.read_csv(tmp_path / "multirun" / "sweep_overview.csv", keep_default_na=False)
    assert table[["job", "sat.tile", "status"]].values.tolist() == [[i, i, "ok"] for i in range(4)]
    assert table["tile"].tolist()[:2] == ["test_resnet, test_convnext x test_resnet, test_convnext",
                                          "test_resnet, test_convnext x test_vit, test_efficientnet"]
    assert not list((tmp_path / "multirun").glob("*/records.npz"))  # tiles write rows, not maps
    assert len(list((tmp_path / "cache" / "records").glob("*.npz"))) == 4
    done = satlab_in_process([*COMMON, "sat.tiles=2x2", "sat.assemble=true", cache,
                              f"paths.output_dir={tmp_path / 'assembled'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one = satlab_in_process([*COMMON, f"paths.cache_dir={tmp_path / 'cache_one'}",
                             f"paths.output_dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_records(tmp_path / "assembled" / "records.npz"), load_records(tmp_path / "one" / "records.npz")
    for key in ("models", "sample_ids", "labels", "correct", "fooled"):
        assert np.array_equal(np.asarray(getattr(a, key)), np.asarray(getattr(b, key))), key
    assert (tmp_path / "assembled" / "sat_matrix.csv").read_bytes() == (tmp_path / "one" / "sat_matrix.csv").read_bytes()


@pytest.mark.parametrize("args,message", [
    (["sat.shard=4/4"], "shard index out of range"),
    (["sat.shard=[test_vit,test_vit]"], "more than once"),
    (["sat.assemble=true"], "no complete cached row for 4 source(s): test_resnet, test_vit, test_convnext, "
                            "test_efficientnet"),
])
def test_bad_shard_input_is_one_error_line(tmp_path, args, message, satlab_in_process):
    out = tmp_path / "out"
    done = satlab_in_process([*COMMON, *args, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={out}"],
                             tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("satlab: error:") and message in lines[0], done.stderr
    assert not list(out.glob("*")) if out.exists() else True  # no result file
