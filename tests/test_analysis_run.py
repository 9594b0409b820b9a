"""task=analyze end to end: a tiny synthetic run, bad input (in-process and through the CLI), the paper's released
matrix (skipped when absent) and the exploration notebook executed top to bottom."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from satlab.sat.metric import sat_matrix
from satlab.sat.records import Records, read_matrix, save_records, write_matrix
from satlab.tasks.analyze import run
from satlab.utils import SatlabError, write_json

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/sat-official"
NOTEBOOK = REPO / "notebooks" / "explore_run.ipynb"
RESULT_FILES = ("component_importance.csv", "clusters.csv", "kappa_matrix.csv", "report.md", "importance.png",
                "clusters_heatmap.png", "model_map.png", "eigengap.png", "kappa_vs_sat.png", "pair_features.csv",
                "summary.json")
FAMILIES = {"tiny_cnn": ("CNN", "3s2", "224 x 224", "ReLU"), "tiny_vit": ("Transformer", "16s16", "224 x 224", "GeLU"),
            "tiny_mix": ("MLP-Mixer", "16s16", "256 x 256", "GeLU + ReLU")}


def compose_cfg(out_dir: Path, *overrides: str):
    """The root config with task=analyze, no tracking, results in `out_dir`."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["task=analyze", "logger=none", f"paths.output_dir={out_dir}",
                                                        *overrides])


def make_tiny_run(root: Path, seed: int = 0) -> Path:
    """A task=sat-like run dir: 9 models in 3 families, sat_matrix.csv, records.npz, models.csv, summary.json."""
    rng = np.random.default_rng(seed)
    names = [f"{fam}_{i}" for fam in FAMILIES for i in range(3)]
    fam = np.repeat(np.arange(3), 3)
    n, s = len(names), 120
    correct = rng.random((n, s)) < rng.uniform(0.8, 0.95, size=(n, 1))
    p = np.where(fam[:, None] == fam[None, :], 0.75, 0.12)
    np.fill_diagonal(p, 1.0)
    fooled = rng.random((n, n, s)) < p[:, :, None]
    root.mkdir(parents=True, exist_ok=True)
    write_matrix(root / "sat_matrix.csv", names, sat_matrix(correct, fooled))
    save_records(root / "records.npz", Records(names, np.arange(s), rng.integers(0, 10, s), correct, fooled))
    rows = []
    for name, acc in zip(names, correct.mean(axis=1)):
        base, stem, res, act = FAMILIES[name.rsplit("_", 1)[0]]
        rows.append({"model": name, "family": name.rsplit("_", 1)[0], "clean_accuracy": acc, "base_architecture": base,
                     "stem_layer": stem, "input_resolution": res, "normalization": "BN", "activation": act,
                     "dw_conv": "" if name.endswith("_0") else "No"})
    pd.DataFrame(rows).to_csv(root / "models.csv", index=False)
    write_json(root / "summary.json", {"task": "sat"})
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("sat_run"))


def test_tiny_run_end_to_end(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    summary = run(compose_cfg(out, f"analyze.matrix={tiny_run / 'sat_matrix.csv'}", "analyze.importance_seeds=2"))
    for name in RESULT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    clusters = pd.read_csv(out / "clusters.csv")
    assert list(clusters.columns) == ["model", "cluster", "family"]
    assert summary["clusters"]["n_clusters"] == 3  # the eigengap finds the 3 families
    assert clusters.groupby("family")["cluster"].nunique().eq(1).all() and clusters["cluster"].nunique() == 3
    imp = pd.read_csv(out / "component_importance.csv")
    assert list(imp.columns) == ["component", "importance_mean", "importance_std", "rank"]
    assert set(imp["component"]) == {"base_architecture", "stem_layer", "input_resolution", "activation"}
    assert summary["dropped_components"]["normalization"] == "the same for every model"
    assert summary["dropped_components"]["dw_conv"].startswith("unknown for 3 of 9 models")
    names, kappa = read_matrix(out / "kappa_matrix.csv")
    assert names == clusters["model"].tolist() and np.allclose(np.diag(kappa), 1.0)
    assert summary["kappa"]["n_pairs"] == 36 and -1 <= summary["kappa"]["spearman_rho"] <= 1
    text = (out / "report.md").read_text()
    for needle in ("![Component importance](importance.png)", "![Model map](model_map.png)", "Spearman",
                   "Most similar pairs", "median", "```yaml", "Top components"):
        assert needle in text
    printed = capsys.readouterr().out
    assert "cluster 0" in printed and "base_architecture" in printed and str(out) in printed


def test_clusters_do_not_change_with_the_seed(tiny_run, tmp_path):
    outs = []
    for seed in (0, 11):
        out = tmp_path / f"seed{seed}"
        run(compose_cfg(out, f"analyze.matrix={tiny_run / 'sat_matrix.csv'}", f"seed={seed}",
                        "analyze.importance_seeds=1", "analyze.n_clusters=4"))
        outs.append((out / "clusters.csv").read_bytes())
    assert outs[0] == outs[1]


def test_default_matrix_is_the_run_dirs_or_the_newest_sat_run(tiny_run, tmp_path, monkeypatch):
    inplace = make_tiny_run(tmp_path / "inplace")
    summary = run(compose_cfg(inplace, "analyze.importance_seeds=1"))
    assert Path(summary["matrix"]) == (inplace / "sat_matrix.csv").resolve()
    assert (inplace / "analyze" / "report.md").is_file()  # the sat run's own summary.json is kept
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SatlabError, match="pass analyze.matrix="):
        run(compose_cfg(tmp_path / "none"))
    for stamp in ("2024-01-01_00-00-00", "2024-01-02_00-00-00"):
        make_tiny_run(tmp_path / "outputs" / "sat" / stamp)
    summary = run(compose_cfg(tmp_path / "latest", "analyze.importance_seeds=1"))
    assert Path(summary["matrix"]).parent.name == "2024-01-02_00-00-00"
    assert summary["kappa"] is not None  # records.npz next to the matrix is picked up


BAD_MATRICES = {
    "not_square": (",a,b,c\na,4.6,2,3\nb,2,4.6,3\n", "is not square"),
    "asymmetric": (",tiny_cnn_0,tiny_cnn_1,tiny_vit_0\ntiny_cnn_0,4.6,2,3\ntiny_cnn_1,2.5,4.6,3\n"
                   "tiny_vit_0,3,3,4.6\n", "is not symmetric"),
    "non_numeric": (",tiny_cnn_0,tiny_cnn_1,tiny_vit_0\ntiny_cnn_0,4.6,2,x\ntiny_cnn_1,2,4.6,3\n"
                    "tiny_vit_0,x,3,4.6\n", "'x', not a number"),
    "names_mismatch": (",a,b,c\na,4.6,2,3\nc,2,4.6,3\nb,3,3,4.6\n", "row 2 is 'c' but column 2 is 'b'"),
    "unknown_models": (",tiny_cnn_0,resnet_who,vit_what\ntiny_cnn_0,4.6,2,3\nresnet_who,2,4.6,3\n"
                       "vit_what,3,3,4.6\n", "no component metadata: resnet_who, vit_what"),
}


def _bad_matrix(tiny_run: Path, tmp_path: Path, case: str) -> Path:
    """The bad matrix next to the tiny run's models.csv (so metadata of its tiny_* models is available)."""
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "models.csv").write_bytes((tiny_run / "models.csv").read_bytes())
    (folder / f"{case}.csv").write_text(BAD_MATRICES[case][0])
    return folder / f"{case}.csv"


@pytest.mark.parametrize("case", sorted(BAD_MATRICES))
def test_bad_input_fails_before_writing(tiny_run, tmp_path, case):
    out = tmp_path / "out"
    with pytest.raises(SatlabError, match=BAD_MATRICES[case][1]) as err:
        run(compose_cfg(out, f"analyze.matrix={_bad_matrix(tiny_run, tmp_path, case)}"))
    assert "\n" not in str(err.value)
    assert not any((out / name).exists() for name in RESULT_FILES)


def test_bad_options_fail_cleanly(tiny_run, tmp_path):
    matrix = f"analyze.matrix={tiny_run / 'sat_matrix.csv'}"
    with pytest.raises(SatlabError, match="analyze.n_clusters=20"):
        run(compose_cfg(tmp_path, matrix, "analyze.n_clusters=20"))
    with pytest.raises(SatlabError, match="records .* not found"):
        run(compose_cfg(tmp_path, matrix, f"analyze.records={tmp_path / 'nope.npz'}"))
    with pytest.raises(SatlabError, match="nope.csv. not found"):
        run(compose_cfg(tmp_path, f"analyze.matrix={REPO / 'nope.csv'}"))  # missing file -> SatlabError too


def test_cli_bad_input_is_one_error_line(tiny_run, tmp_path):
    case, out = "unknown_models", tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "satlab.cli", "task=analyze", f"analyze.matrix={_bad_matrix(tiny_run, tmp_path, case)}",
         "logger=none", f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("satlab: error:")]
    assert len(errors) == 1 and BAD_MATRICES[case][1] in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any((out / name).exists() for name in RESULT_FILES)


def test_released_matrix_with_paper69(tmp_path, capsys):
    matrix = REFERENCE / "SAT_release.csv"
    if not matrix.is_file():
        pytest.skip(f"the paper's released matrix is not at {matrix}")
    if not (REPO / "conf" / "model_set" / "paper69.yaml").is_file():
        pytest.skip("conf/model_set/paper69.yaml is not there yet")
    summaries, clusters = [], []
    for seed, fast in ((0, ["analyze.importance_seeds=2"]), (5, ["analyze.importance_seeds=1", "analyze.n_repeats=1"])):
        out = tmp_path / f"seed{seed}"
        summaries.append(run(compose_cfg(out, f"analyze.matrix={matrix}", "model_set=paper69", f"seed={seed}",
                                         "analyze.n_clusters=10", *fast)))
        clusters.append((out / "clusters.csv").read_bytes())
        assert all((out / name).is_file() for name in RESULT_FILES if "kappa" not in name)
        if seed == 0:
            printed = capsys.readouterr().out
            with capsys.disabled():
                print(printed)
    assert clusters[0] == clusters[1]  # a different seed gives the same clusters
    summary = summaries[0]
    assert summary["n_models"] == 69 and summary["clusters"]["n_clusters"] == 10
    assert summary["metadata_sources"] == {"model set catalog": 69}
    ranking = summary["importance"]["ranking"]
    assert len(ranking) == 13 and {"base_architecture", "stem_layer"} <= set(ranking[:3])  # the paper's finding
    assert "Component importance" in printed and "cluster 9" in printed


def test_notebook_runs_top_to_bottom(tiny_run, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "analysis"
    run(compose_cfg(out, f"analyze.matrix={tiny_run / 'sat_matrix.csv'}", "analyze.importance_seeds=1"))
    monkeypatch.setenv("SATLAB_RUN_DIR", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the `python3` kernel is started with this interpreter (jupyter_client maps a kernelspec's "python" to it)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Spearman rho(kappa, SAT)" in text and "cluster 0:" in text and str(out) in text
    assert os.environ["SATLAB_RUN_DIR"] == str(out)
