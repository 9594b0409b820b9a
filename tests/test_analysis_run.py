"""task=analyze end to end: a tiny synthetic run, bad input (in-process and through the CLI), the paper's released
matrix (skipped when absent) and the exploration notebook executed top to bottom."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

from satlab.sat.metric import sat_bootstrap as bootstrap_ci
from satlab.sat.metric import sat_matrix
from satlab.sat.records import Records, load_records, read_matrix, save_records, write_matrix
from satlab.tasks.analyze import run
from satlab.utils import SatlabError, write_json

REPO = Path(__file__).resolve().parents[1]
# ../shared/reference/sat-official/ next to the repo; SATLAB_REFERENCE_DIR points elsewhere (e.g. from a worktree)
REFERENCE = Path(os.environ.get("SATLAB_REFERENCE_DIR") or REPO.parent / "shared/reference/sat-official")
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


def make_tiny_run(root: Path, seed: int = 0, never: tuple[str, ...] = ()) -> Path:
    """A task=sat-like run dir: 9 models in 3 families, sat_matrix.csv, records.npz, models.csv, summary.json.

    `never`: families whose models never fool each other (floored pairs)."""
    rng = np.random.default_rng(seed)
    names = [f"{fam}_{i}" for fam in FAMILIES for i in range(3)]
    fam = np.repeat(np.arange(3), 3)
    n, s = len(names), 120
    correct = rng.random((n, s)) < rng.uniform(0.8, 0.95, size=(n, 1))
    p = np.where(fam[:, None] == fam[None, :], 0.75, 0.12)
    np.fill_diagonal(p, 1.0)
    fooled = rng.random((n, n, s)) < p[:, :, None]
    blocked = np.array([name.rsplit("_", 1)[0] in never for name in names])
    fooled[np.ix_(blocked, blocked)] &= (fam[blocked][:, None] == fam[blocked][None, :])[:, :, None]
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
    upper = np.triu_indices(9, 1)
    kappa_pairs, sat_pairs = kappa[upper], read_matrix(tiny_run / "sat_matrix.csv")[1][upper]
    assert summary["kappa"]["n_pairs"] == 36
    assert summary["kappa"]["spearman_rho"] == pytest.approx(spearmanr(kappa_pairs, sat_pairs)[0], abs=1e-6)
    # the bootstrap CIs of the report are those of the records, and contain the matrix's values
    records = load_records(tiny_run / "records.npz")
    low, high = bootstrap_ci(records.correct, records.fooled, n_boot=1000, seed=0)
    top = summary["matrix_stats"]["most_similar"][0]
    i, j = names.index(top["a"]), names.index(top["b"])
    assert (top["ci_low"], top["ci_high"]) == pytest.approx((low[i, j], high[i, j]))
    assert top["ci_low"] < top["sat"] < top["ci_high"] and summary["ci"]["n_boot"] == 1000
    assert summary["floors"]["n_floored_pairs"] == 0
    text = (out / "report.md").read_text()
    for needle in ("![Component importance](importance.png)", "![Model map](model_map.png)", "Spearman",
                   "Most similar pairs", "median", "```yaml", "Top components", "95% CI low",
                   "percentile bootstrap over the 120 images", "No pair is floored"):
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
    "one_side_empty": (",tiny_cnn_0,tiny_cnn_1,tiny_vit_0\ntiny_cnn_0,4.6,,3\ntiny_cnn_1,2.04,4.6,3\n"
                       "tiny_vit_0,3,3,4.6\n", r"is not symmetric: \(tiny_cnn_0, tiny_cnn_1\) is empty but "
                                            r"\(tiny_cnn_1, tiny_cnn_0\) = 2.04; a pair has one set of jointly"),
    "above_ln_100": (",tiny_cnn_0,tiny_cnn_1,tiny_vit_0\ntiny_cnn_0,4.6,1e300,3\ntiny_cnn_1,1e300,4.6,3\n"
                     "tiny_vit_0,3,3,4.6\n", r"cell \(tiny_cnn_0, tiny_cnn_1\) is 1e300, above ln 100 = 4.6052; a "
                                          "SAT value is the natural log of a transfer rate in %"),
    "semicolons": (";tiny_cnn_0;tiny_cnn_1;tiny_vit_0\ntiny_cnn_0;4.6;2;3\ntiny_cnn_1;2;4.6;3\ntiny_vit_0;3;3;4.6\n",
                   "has 4 lines but no columns: its lines are separated by ';', not commas; write it as a "
                   "comma-separated CSV"),
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


TINY3 = ("tiny_cnn_0", "tiny_vit_0", "tiny_mix_0")
LN_EPS = float(np.log(1e-8))
NO_INFO = {  # matrices a task=analyze refuses (3 models of the tiny run, so metadata exists)
    "all_nan": (np.nan, np.nan, np.nan, "every off-diagonal cell is NaN"),
    "constant": (2.5, 2.5, 2.5, "every off-diagonal cell is 2.5"),
    "all_floored": (LN_EPS, LN_EPS, LN_EPS, "every off-diagonal cell is floored at ln eps_s"),
    "floored_rest_constant": (2.0, LN_EPS, 2.0, "once floored pairs are set to the lowest non-floored SAT"),
    "inf_cell": (2.0, np.inf, 3.0, "is 'inf'; cells must be finite"),
}


def _matrix_case(tiny_run: Path, tmp_path: Path, case: str) -> Path:
    ab, ac, bc, _ = NO_INFO[case]
    sat = np.array([[4.6, ab, ac], [ab, 4.6, bc], [ac, bc, 4.6]])
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "models.csv").write_bytes((tiny_run / "models.csv").read_bytes())
    return write_matrix(folder / f"{case}.csv", list(TINY3), sat)


@pytest.mark.parametrize("case", sorted(NO_INFO))
def test_matrix_without_information_is_refused_before_writing(tiny_run, tmp_path, case):
    out = tmp_path / "out"
    with pytest.raises(SatlabError, match=NO_INFO[case][-1]) as err:
        run(compose_cfg(out, f"analyze.matrix={_matrix_case(tiny_run, tmp_path, case)}"))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert not any((out / name).exists() for name in RESULT_FILES)


BAD_OPTIONS = [  # (override, message fragment) on the tiny run's 9 x 9 matrix (36 pairs)
    ("analyze.test_size=1.5", "analyze.test_size=1.5 must be a share of the pairs strictly between 0 and 1"),
    ("analyze.test_size=0", "analyze.test_size=0 must be a share"),
    ("analyze.test_size=0.01", "analyze.test_size=0.01 holds out 0 of 36 pairs"),
    ("analyze.test_size=0.99", "holds out 36 of 36 pairs"),
    ("analyze.n_estimators=0", "analyze.n_estimators=0 must be an integer >= 1"),
    ("analyze.importance_seeds=0", "analyze.importance_seeds=0 must be an integer >= 1"),
    ("analyze.n_repeats=0", "analyze.n_repeats=0 must be an integer >= 1"),
    ("analyze.top_pairs=0", "analyze.top_pairs=0 must be an integer >= 1"),
    ("analyze.max_clusters=1", "analyze.max_clusters=1 must be an integer >= 2"),
    ("analyze.n_clusters=1", "analyze.n_clusters=1 must be null (the eigengap decides) or an integer between 2"),
    ("analyze.n_clusters=9", "analyze.n_clusters=9 must be null"),
    ("analyze.n_clusters=2.5", "analyze.n_clusters=2.5 must be null"),
    ("analyze.affinity=cosine", "analyze.affinity=cosine is unknown; choose one of gaussian, exp"),
    ("analyze.importance_model=svm", "analyze.importance_model=svm is unknown"),
    ("analyze.n_bootstrap=5", "analyze.n_bootstrap=5 is too few resamples"),
    ("analyze.n_bootstrap=-1", "analyze.n_bootstrap=-1 must be an integer >= 0"),
    ("analyze.eps_s=0", "analyze.eps_s=0 must be null"),
    ("analyze.symmetric_tol=-1", "analyze.symmetric_tol=-1 must be a number >= 0"),
]


@pytest.mark.parametrize(("override", "message"), BAD_OPTIONS)
def test_bad_option_is_one_line_before_writing(tiny_run, tmp_path, override, message):
    out = tmp_path / "out"
    with pytest.raises(SatlabError) as err:
        run(compose_cfg(out, f"analyze.matrix={tiny_run / 'sat_matrix.csv'}", override))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not any((out / name).exists() for name in RESULT_FILES)


def test_two_models_and_foreign_records_are_refused(tiny_run, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "models.csv").write_bytes((tiny_run / "models.csv").read_bytes())
    two = write_matrix(folder / "two.csv", list(TINY3[:2]), np.array([[4.6, 2.0], [2.0, 4.6]]))
    with pytest.raises(SatlabError, match="needs at least 3"):
        run(compose_cfg(tmp_path / "out", f"analyze.matrix={two}"))
    other = make_tiny_run(tmp_path / "other", seed=1)  # same models, other records
    with pytest.raises(SatlabError, match="do not reproduce the matrix: SAT"):
        run(compose_cfg(tmp_path / "out", f"analyze.matrix={tiny_run / 'sat_matrix.csv'}",
                        f"analyze.records={other / 'records.npz'}"))
    assert not (tmp_path / "out" / "report.md").exists()


def test_floored_pairs_are_reported_and_kept_from_dominating(tmp_path, capsys):
    """The tiny run with CNNs and Mixers never fooling each other: 9 floored pairs, named on the console and in the
    report, replaced by the rule-of-three bound in the analyses; sat_matrix.csv itself keeps ln eps_s."""
    root = make_tiny_run(tmp_path / "run", never=("tiny_cnn", "tiny_mix"))
    names, raw = read_matrix(root / "sat_matrix.csv")
    assert (raw <= LN_EPS + 1e-6).sum() == 18
    out = tmp_path / "out"
    summary = run(compose_cfg(out, f"analyze.matrix={root / 'sat_matrix.csv'}", "analyze.importance_seeds=1",
                              "analyze.n_clusters=3"))
    floors = summary["floors"]
    assert floors["n_floored_pairs"] == 9 and ["tiny_cnn_0", "tiny_mix_0"] in [list(p) for p in floors["pairs"]]
    assert "rule-of-three" in floors["rule"]
    assert summary["clusters"]["n_clusters"] == 3 and summary["matrix_stats"]["min"] > -5  # not ln 1e-8 = -18.4
    clusters = pd.read_csv(out / "clusters.csv")
    assert clusters.groupby("family")["cluster"].nunique().eq(1).all() and clusters["cluster"].nunique() == 3
    least = summary["matrix_stats"]["least_similar"][0]
    assert least["floored"] and {least["a"][:8], least["b"][:8]} == {"tiny_cnn", "tiny_mix"}
    n_joint = load_records(root / "records.npz").correct.astype(int)
    n_joint = n_joint @ n_joint.T
    i, j = names.index(least["a"]), names.index(least["b"])
    assert least["sat"] == pytest.approx(min(np.log(300 / (2 * n_joint[i, j])), summary["matrix_stats"]["min"]))
    pairs = pd.read_csv(out / "pair_features.csv")
    assert pairs["floored"].sum() == 9 and pairs["sat"].min() > -5
    assert "**9 floored pair(s)**" in (out / "report.md").read_text()
    assert "9 floored pair(s) (0% transfer" in capsys.readouterr().out


def test_bad_options_fail_cleanly(tiny_run, tmp_path):
    matrix = f"analyze.matrix={tiny_run / 'sat_matrix.csv'}"
    with pytest.raises(SatlabError, match="analyze.n_clusters=20"):
        run(compose_cfg(tmp_path, matrix, "analyze.n_clusters=20"))
    with pytest.raises(SatlabError, match="records .* not found"):
        run(compose_cfg(tmp_path, matrix, f"analyze.records={tmp_path / 'nope.npz'}"))
    with pytest.raises(SatlabError, match="nope.csv. not found"):
        run(compose_cfg(tmp_path, f"analyze.matrix={REPO / 'nope.csv'}"))  # missing file -> SatlabError too


def test_cli_bad_input_is_one_error_line(tiny_run, tmp_path, satlab_in_process):
    case, out = "unknown_models", tmp_path / "run"
    proc = satlab_in_process(["task=analyze", f"analyze.matrix={_bad_matrix(tiny_run, tmp_path, case)}",
                              "logger=none", f"hydra.run.dir={out}"], tmp_path)
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
    assert summary["floors"]["n_floored_pairs"] == 0 and summary["ci"]["n_boot"] == 0  # no records released
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


def test_eps_s_comes_from_the_option_then_the_sat_runs_summary(tmp_path):
    from satlab.tasks.analyze import find_eps_s

    matrix = tmp_path / "sat_matrix.csv"
    assert find_eps_s(None, matrix) == 1e-8  # no summary.json
    write_json(tmp_path / "summary.json", {"task": "sat", "config": {"sat": {"eps_s": 1e-3}}})
    assert find_eps_s(None, matrix) == 1e-3
    assert find_eps_s(0.5, matrix) == 0.5
