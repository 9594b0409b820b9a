"""task=compare on constructed matrices: the expected rank correlations, Mantel p-values and cluster agreement."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from scipy.stats import kendalltau, spearmanr

from satlab.analysis.compare import compare_matrices, mantel, upper_pairs
from satlab.cli import run
from satlab.sat.records import write_matrix
from satlab.utils import SatlabError

CONF = Path(__file__).resolve().parents[1] / "conf"


def block_matrix(n_per: int, groups: int, rng, noise: float = 0.1) -> np.ndarray:
    labels = np.repeat(np.arange(groups), n_per)
    base = np.where(labels[:, None] == labels[None, :], 3.0, 1.0) + noise * rng.standard_normal((len(labels),) * 2)
    sym = 0.5 * (base + base.T)
    np.fill_diagonal(sym, 4.6)
    return sym


def compare_cfg(tmp_path, a, b, *extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["task=compare", "logger=none", f"compare.a={a}", f"compare.b={b}",
                                            f"paths.output_dir={tmp_path / 'out'}", *extra])


def test_compare_task_on_constructed_matrices(tmp_path):
    rng = np.random.default_rng(0)
    a = block_matrix(3, 3, rng)
    names = [f"m{i}" for i in range(9)]
    b = 0.5 * a - 1.0  # a monotone transform: identical ranks (SAT stays <= ln 100)
    order = [4, 0, 8, 1, 7, 2, 6, 3, 5]  # b's file lists the models in another order (and one extra model)
    names_b = [names[i] for i in order] + ["extra"]
    b_file = np.full((10, 10), 0.5)
    b_file[:9, :9] = b[np.ix_(order, order)]
    write_matrix(tmp_path / "a.csv", names, a)
    write_matrix(tmp_path / "b.csv", names_b, b_file)
    summary = run(compare_cfg(tmp_path, tmp_path / "a.csv", tmp_path / "b.csv", "compare.n_permutations=199"))
    assert summary["n_models"] == 9 and summary["only_b"] == ["extra"]
    assert summary["spearman"] == pytest.approx(1.0) and summary["kendall"] == pytest.approx(1.0)
    assert summary["mantel_p"] == pytest.approx(1 / 200)  # no permutation beats the identity
    assert summary["ari"] == pytest.approx(1.0)
    for name in ("comparison.json", "comparison_pairs.csv", "comparison_scatter.png", "comparison.md", "summary.json"):
        assert (tmp_path / "out" / name).is_file(), name
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())["n_pairs"] == 36


def test_correlations_match_scipy_and_reversed_ranks_are_not_significant():
    rng = np.random.default_rng(1)
    a = block_matrix(2, 3, rng, noise=0.5)
    b = block_matrix(2, 3, rng, noise=0.5)
    names = [f"m{i}" for i in range(6)]
    result = compare_matrices(names, a, names, b, n_permutations=999)
    assert result.spearman == pytest.approx(spearmanr(upper_pairs(a), upper_pairs(b)).statistic)
    assert result.kendall == pytest.approx(kendalltau(upper_pairs(a), upper_pairs(b)).statistic)
    assert result.exact and result.permutations == 720  # 6! <= 999: exact test
    reverse = compare_matrices(names, a, names, -a, n_permutations=999)
    assert reverse.spearman == pytest.approx(-1.0) and reverse.mantel_p == pytest.approx(1.0)
    assert mantel(a, a, n_permutations=999)[0] == pytest.approx(1 / 720)  # noisy: only the identity reaches rho 1
    blocks = block_matrix(2, 3, rng, noise=0.0)
    p, count, exact = mantel(blocks, blocks, n_permutations=999)
    assert exact and p == pytest.approx(48 / 720)  # 3! x (2!)^3 permutations keep the blocks and tie the identity


def test_fewer_than_three_common_models_is_an_error(tmp_path, capsys):
    write_matrix(tmp_path / "a.csv", ["x", "y", "z"], np.eye(3))
    write_matrix(tmp_path / "b.csv", ["x", "y", "w"], np.eye(3))
    with pytest.raises(SatlabError, match="share 2 model"):
        run(compare_cfg(tmp_path, tmp_path / "a.csv", tmp_path / "b.csv"))
    assert not (tmp_path / "out" / "comparison.json").exists()


def test_tsne_map_beside_mds(tmp_path):
    from satlab.analysis.clustering import model_map, sat_distance

    rng = np.random.default_rng(2)
    sat = block_matrix(3, 3, rng, noise=0.05)
    dist = sat_distance(sat)
    tsne = model_map(dist, "tsne", seed=0)
    assert tsne.shape == (9, 2) and np.allclose(tsne, model_map(dist, "tsne", seed=0))  # seeded
    within = np.linalg.norm(tsne[0] - tsne[1])
    across = np.linalg.norm(tsne[0] - tsne[3])
    assert within < across  # models of one block land together
    assert model_map(dist, "mds").shape == (9, 2)
    from satlab.analysis.plots import plot_model_map

    plot_model_map([f"m{i}" for i in range(9)], tsne, np.repeat(np.arange(3), 3), tmp_path / "map.png", method="tsne")
    assert (tmp_path / "map.png").stat().st_size > 0
