"""Unit tests of satlab.analysis: pair features, clustering, kappa, importance, summary stats and input checks."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from satlab.analysis import clustering as clu
from satlab.analysis import consistency, features, floors, importance, report
from satlab.sat.records import read_matrix, write_matrix
from satlab.utils import SatlabError


# ---------------------------------------------------------------- features
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ReLU", {"relu"}),
        ("ReLU + SiLU", {"relu", "silu"}),
        ("  GeLU  +ReLU ", {"gelu", "relu"}),
        ("Yes (Halo, BoT)", {"yes (halo)", "yes (bot)"}),
        ("Yes (SE)", {"yes (se)"}),
        ("~", {"n/a"}),
        ("-", {"n/a"}),
        ("", None),
        (None, None),
        (float("nan"), None),
    ],
)
def test_parse_value(text, expected):
    parsed = features.parse_value(text)
    assert parsed == (None if expected is None else frozenset(expected))


def test_overlap_of_multi_valued_entries():
    p = features.parse_value
    assert features.overlap(p("ReLU + SiLU"), p("ReLU")) == pytest.approx(0.5)
    assert features.overlap(p("ReLU + SiLU"), p("silu + relu")) == 1.0
    assert features.overlap(p("ReLU + SiLU + ReLU6"), p("GeLU + ReLU")) == pytest.approx(0.25)
    assert features.overlap(p("Yes (Lambda, Halo, BoT)"), p("Yes (Halo)")) == pytest.approx(1 / 3)
    assert features.overlap(p("~"), p("-")) == 1.0  # both "not applicable"
    assert features.overlap(p("~"), p("Middle")) == 0.0


@pytest.mark.parametrize(("text", "value"), [("224 x 224", 224.0), ("299x299", 299.0), ("256", 256.0),
                                             ("224 x 256", float(np.sqrt(224 * 256))), ("~", None), ("", None)])
def test_parse_resolution(text, value):
    got = features.parse_resolution(text)
    assert got == (None if value is None else pytest.approx(value))


def _meta() -> dict[str, dict[str, str]]:
    return {
        "a": {"base_architecture": "CNN", "activation": "ReLU + SiLU", "input_resolution": "224 x 224",
              "cw_attention_location": "~", "group_conv": "No", "dw_conv": "Yes"},
        "b": {"base_architecture": "CNN", "activation": "ReLU", "input_resolution": "256 x 256",
              "cw_attention_location": "Middle", "group_conv": "No"},
        "c": {"base_architecture": "Transformer", "activation": "GeLU", "input_resolution": "224 x 224",
              "cw_attention_location": "~", "group_conv": "No", "dw_conv": "No"},
    }


def test_component_table_drops_constant_and_unknown_components():
    table, dropped = features.component_table(_meta(), ["a", "b", "c"])
    assert list(table.columns) == ["base_architecture", "input_resolution", "activation", "cw_attention_location"]
    assert dropped["group_conv"] == "the same for every model"
    assert dropped["dw_conv"].startswith("unknown for 1 of 3 models (b)")
    assert dropped["stem_layer"] == "unknown for every model"
    assert set(dropped) | set(table.columns) == set(features.COMPONENTS)


def test_pair_features_by_hand():
    table, _ = features.component_table(_meta(), ["a", "b", "c"])
    pairs = features.pair_features(table)
    assert list(zip(pairs.model_a, pairs.model_b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs["base_architecture"].tolist() == [1.0, 0.0, 0.0]
    assert pairs["activation"].tolist() == [0.5, 0.0, 0.0]
    assert pairs["input_resolution"].tolist() == [32.0, 0.0, 32.0]
    assert pairs["cw_attention_location"].tolist() == [0.0, 1.0, 0.0]  # "~" vs "~" counts as the same
    sat = np.array([[4.6, 3.0, 2.0], [3.0, 4.6, 2.5], [2.0, 2.5, 4.6]])
    assert features.pair_targets(sat).tolist() == [3.0, 2.0, 2.5]


def test_resolve_metadata_prefers_catalog_then_models_csv_and_names_missing_models():
    catalog = {"a": {"family": "fa", "components": {"base_architecture": "CNN"}}}
    table = pd.DataFrame({"model": ["a", "b"], "family": ["x", ""], "base_architecture": ["MLP", "Transformer"]})
    comps, fams, sources = features.resolve_metadata(["a", "b"], catalog, table)
    assert comps == {"a": {"base_architecture": "CNN"}, "b": {"base_architecture": "Transformer"}}
    assert fams == {"a": "fa", "b": "Transformer"}
    assert sources == {"a": "model set catalog", "b": "models.csv"}
    with pytest.raises(SatlabError, match=r"2 model\(s\) of the matrix have no component metadata: c, d"):
        features.resolve_metadata(["a", "b", "c", "d"], catalog, table)


# ---------------------------------------------------------------- clustering
def block_matrix(sizes, seed=0, within=3.5, between=2.2, noise=0.15):
    """A symmetric SAT-like matrix with known groups (shuffled order) and its true labels."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(truth))
    truth = truth[perm]
    base = np.where(truth[:, None] == truth[None, :], within, between)
    noise_m = rng.normal(0, noise, base.shape)
    sat = base + (noise_m + noise_m.T) / 2
    np.fill_diagonal(sat, np.log(100))
    return sat, truth


def same_partition(a, b) -> bool:
    pairs = {(int(x), int(y)) for x, y in zip(a, b)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("affinity", clu.AFFINITIES)
def test_spectral_clustering_recovers_known_blocks(affinity):
    sat, truth = block_matrix([5, 7, 4, 6])
    result = clu.spectral_clusters(sat, affinity=affinity)
    assert result.eigengap_k == 4 and result.n_clusters == 4
    assert same_partition(result.labels, truth)
    assert result.labels[0] == 0 and clu.canonical_labels(result.labels).tolist() == result.labels.tolist()
    fixed = clu.spectral_clusters(sat, n_clusters=4, affinity=affinity)
    assert fixed.labels.tolist() == result.labels.tolist()


@pytest.mark.parametrize("affinity", clu.AFFINITIES)
def test_clusters_are_scikit_learns_spectral_clustering(affinity):
    """Our dense embedding + scikit-learn's CLUSTER_QR = SpectralClustering(affinity="precomputed",
    assign_labels="cluster_qr") on the affinity: the same partition, on blocks, a forced merge and a NaN pair."""
    from sklearn.cluster import SpectralClustering

    with_nan, _ = block_matrix([4, 4])
    with_nan[0, 1] = with_nan[1, 0] = np.nan
    cases = [(block_matrix([5, 7, 4, 6])[0], 4), (block_matrix([5, 7, 4, 6])[0], 3),
             (block_matrix([6, 6, 6], seed=3, noise=0.4)[0], 3), (with_nan, 2)]
    for sat, k in cases:
        ours = clu.spectral_clusters(sat, n_clusters=k, affinity=affinity).labels
        theirs = SpectralClustering(k, affinity="precomputed", assign_labels="cluster_qr",
                                    random_state=0).fit(clu.sat_affinity(sat, affinity)).labels_
        assert same_partition(ours, theirs) and len(set(ours.tolist())) == k, (k, ours, theirs)


def test_clusters_do_not_depend_on_seed_or_global_rng():
    sat, _ = block_matrix([6, 6, 6], seed=3, noise=0.4)
    runs = []
    for seed in (0, 1, 123):
        np.random.seed(seed)
        runs.append(clu.spectral_clusters(sat, n_clusters=3).labels.tolist())
    assert runs[0] == runs[1] == runs[2]


def test_nan_and_isolated_models_are_handled():
    sat, truth = block_matrix([4, 4])
    sat[0, 1] = sat[1, 0] = np.nan
    result = clu.spectral_clusters(sat, n_clusters=2)
    assert same_partition(result.labels, truth)
    weights = clu.sat_affinity(sat)
    assert weights[0, 1] == 0 and np.all(np.diag(weights) == 0) and np.allclose(weights, weights.T)
    with pytest.raises(ValueError, match="n_clusters"):
        clu.spectral_clusters(sat, n_clusters=9)


def test_eigengap_and_mds():
    assert clu.eigengap(np.array([0.0, 0.0, 0.0, 0.9, 0.95, 1.0]), max_clusters=5) == 3
    points = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    coords = clu.classical_mds(dist)
    assert np.allclose(np.linalg.norm(coords[:, None] - coords[None], axis=-1), dist)
    assert np.array_equal(coords, clu.classical_mds(dist))


# ---------------------------------------------------------------- kappa, importance, summary
def test_kappa_matches_sklearn_and_correlates():
    rng = np.random.default_rng(0)
    correct = rng.random((4, 200)) < np.array([[0.9], [0.8], [0.7], [0.6]])
    kappa = consistency.kappa_matrix(correct)
    for i in range(4):
        for j in range(4):
            assert kappa[i, j] == pytest.approx(cohen_kappa_score(correct[i], correct[j]))
    corr = consistency.kappa_sat_correlation(kappa, kappa * 2 + 1)
    assert corr["spearman_rho"] == pytest.approx(1.0) and corr["n_pairs"] == 6
    assert consistency.align(["x", "b", "a"], ["a", "b", "c"]) == (["a", "b"], pytest.approx([2, 1]))


def test_kappa_of_perfect_and_always_wrong_models():
    """A model's kappa with itself is 1, also at 100% or 0% accuracy, where the formula is 0/0; two models that are
    both always right (or both always wrong) agree on every image: 1 (Geirhos et al.'s convention)."""
    from satlab.ensemble.stats import resampled_kappa

    rng = np.random.default_rng(1)
    mixed = rng.random(40) < 0.6
    correct = np.stack([np.ones(40, bool), np.ones(40, bool), np.zeros(40, bool), np.zeros(40, bool), mixed])
    kappa = consistency.kappa_matrix(correct)
    assert not np.isnan(kappa).any() and np.array_equal(kappa, kappa.T)
    assert (np.diagonal(kappa) == 1.0).all()
    assert kappa[0, 1] == kappa[2, 3] == 1.0  # both always right / both always wrong: p_obs = p_exp = 1
    assert kappa[0, 2] == 0.0  # always right vs always wrong: p_obs = p_exp = 0, no convention needed
    assert kappa[0, 4] == kappa[2, 4] == 0.0  # a constant model carries no information on which images are hard
    assert kappa[0, 4] == pytest.approx(cohen_kappa_score(correct[0], correct[4]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns that 0/0 is undefined
        assert np.isnan(cohen_kappa_score(correct[0], correct[1]))  # where scikit-learn leaves it NaN
    first, second = np.triu_indices(5, k=1)
    same = resampled_kappa(correct, first, second, np.ones((1, 40), np.float32))[:, 0]  # the ensemble's kappa
    np.testing.assert_allclose(same, kappa[first, second], atol=1e-6)
    assert np.isnan(consistency.kappa_matrix(np.ones((2, 0), bool))).all()  # no images: nothing to say


def test_importance_finds_the_informative_component():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"signal": rng.integers(0, 2, 300).astype(float), "noise": rng.random(300)})
    y = 2.0 * X["signal"].to_numpy() + rng.normal(0, 0.1, 300)
    res = importance.component_importance(X, y, seeds=[0, 1], n_repeats=3, n_estimators=50)
    assert res.table["component"].tolist() == ["signal", "noise"]
    assert list(res.table.columns) == list(importance.TABLE_COLUMNS)
    assert res.table["rank"].tolist() == [1, 2] and res.r2["ensemble_mean"] > 0.9 and res.r2["linear_mean"] > 0.9
    again = importance.component_importance(X, y, seeds=[0, 1], n_repeats=3, n_estimators=50)
    pd.testing.assert_frame_equal(res.table, again.table)
    few = importance.component_importance(X.head(4), y[:4], seeds=[0])
    assert few.note and few.table.empty
    assert "no component differs" in importance.component_importance(X[[]], y, seeds=[0]).note
    assert "4 model pairs with a finite SAT; at least 6" in few.note
    with pytest.raises(ValueError, match="test_size=1.5 must be a share"):
        importance.component_importance(X, y, seeds=[0], test_size=1.5)
    with pytest.raises(ValueError, match="holds out 0 of 300 pairs"):
        importance.component_importance(X, y, seeds=[0], test_size=0.001)
    with pytest.raises(ValueError, match="n_estimators=0"):
        importance.component_importance(X, y, seeds=[0], n_estimators=0)
    with pytest.raises(ValueError, match="the 0 seeds"):
        importance.component_importance(X, y, seeds=[])
    assert importance.held_out(0.25, 36) == 9 and importance.held_out(0.5, 4) == 2  # < 6 pairs: no side check


def test_matrix_summary():
    sat = np.array([[4.6, 3.0, 2.0], [3.0, 4.6, 2.5], [2.0, 2.5, 4.6]])
    ci = (sat - np.array([[0, 0.1, 0.5]] * 3), sat + np.array([[0, 0.1, 0.4]] * 3))
    ci = (np.minimum(ci[0], ci[0].T), np.maximum(ci[1], ci[1].T))
    mask = np.zeros((3, 3), bool)
    mask[0, 2] = mask[2, 0] = True
    stats = report.matrix_summary(["a", "b", "c"], sat, top=1, floored=mask, ci=ci)
    assert stats["median"] == 2.5 and stats["n_pairs"] == 3
    assert stats["most_similar"] == [{"a": "a", "b": "b", "sat": 3.0, "floored": False, "ci_low": 2.9,
                                      "ci_high": 3.1}]
    assert stats["least_similar"] == [{"a": "a", "b": "c", "sat": 2.0, "floored": True, "ci_low": 1.5,
                                       "ci_high": 2.4}]
    assert stats["n_floored_pairs"] == 1


def test_ci_text_says_whether_cis_overlap():
    def stats(most, least):
        pair = (lambda lo, hi: {"a": "a", "b": "b", "sat": (lo + hi) / 2, "ci_low": lo, "ci_high": hi})
        return {"most_similar": [pair(*c) for c in most], "least_similar": [pair(*c) for c in least]}

    info = {"n_boot": 1000, "seed": 0, "n_samples": 500}
    text = report.ci_text(stats([(3.0, 3.4), (2.9, 3.1)], [(1.0, 1.5)]), info)
    assert "does not overlap the least similar" in text and "second most similar pairs overlap" in text
    text = report.ci_text(stats([(3.0, 3.4), (2.0, 2.9)], [(1.0, 3.1)]), info)
    assert "CI overlaps the least similar" in text and "do not overlap" in text
    assert "not computed (no records)" in report.ci_text(stats([], []), {"n_boot": 0, "reason": "no records"})


# ---------------------------------------------------------------- bad input at the reader
def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (",a,b,c\na,1,2,3\nb,2,1,3\n", "not square"),
        (",a,b\na,4.6,2.0\nb,3.0,4.6\n", "not symmetric"),
        (",a,b\na,4.6,oops\nb,2.0,4.6\n", r"cell \(a, b\) is 'oops', not a number"),
        (",a,b\nb,4.6,2.0\na,2.0,4.6\n", "row 1 is 'b' but column 1 is 'a'"),
    ],
)
def test_bad_matrix_is_one_clear_error(tmp_path, text, problem):
    with pytest.raises(SatlabError, match=problem) as err:
        read_matrix(_write(tmp_path / "m.csv", text), symmetric_tol=1e-6)
    assert "\n" not in str(err.value)


def test_write_read_roundtrip(tmp_path):
    sat, _ = block_matrix([2, 2])
    names, values = read_matrix(write_matrix(tmp_path / "m.csv", list("abcd"), sat), symmetric_tol=1e-9)
    assert names == list("abcd") and np.allclose(values, sat)


def test_importance_caution_flags_uninformative_rankings():
    from satlab.analysis.report import importance_caution

    assert "not meaningful" in importance_caution(-0.3, 36)
    assert "indicative" in importance_caution(0.5, 36)
    assert importance_caution(0.69, 2346) == ""


# ---------------------------------------------------------------- matrices without information, floored pairs
FLOOR = float(np.log(1e-8))


@pytest.mark.parametrize(
    ("cells", "problem"),
    [
        (np.full((3, 3), np.nan), "every off-diagonal cell is NaN"),
        (np.full((3, 3), 2.5), "every off-diagonal cell is 2.5"),
        (np.full((3, 3), FLOOR), "every off-diagonal cell is floored"),
        (np.array([[4.6, np.inf, 2], [np.inf, 4.6, 3], [2, 3, 4.6]]), "is inf"),
        (np.array([[4.6, 2, np.nan], [2, 4.6, np.nan], [np.nan, np.nan, 4.6]]), "is 2"),  # one finite pair
    ],
)
def test_matrices_without_information_are_named(cells, problem):
    from satlab.sat.metric import floored

    sat = cells.copy()
    np.fill_diagonal(sat, np.log(100))
    if np.isinf(cells).any():
        sat = cells
    assert problem in floors.no_information(sat, floored(sat))


def test_informative_matrices_pass():
    from satlab.sat.metric import floored

    sat, _ = block_matrix([3, 3])
    assert floors.no_information(sat, floored(sat)) == ""
    sat[0, 1] = sat[1, 0] = FLOOR  # some floored pairs are fine
    assert floors.no_information(sat, floored(sat)) == ""


def test_floor_values_rule_of_three_capped_at_the_lowest_measured_pair():
    sat = np.array([[4.6, 3.0, FLOOR, FLOOR], [3.0, 4.6, 2.0, 2.5], [FLOOR, 2.0, 4.6, 3.5],
                    [FLOOR, 2.5, 3.5, 4.6]])
    mask = sat <= FLOOR + 1e-6
    n_joint = np.full((4, 4), 1000.0)
    n_joint[0, 3] = n_joint[3, 0] = 20.0  # ln(300 / 40) = 2.01 > the lowest measured SAT 2.0: capped
    out = floors.floor_values(sat, mask, n_joint)
    assert out[0, 2] == out[2, 0] == pytest.approx(np.log(300 / 2000))
    assert out[0, 3] == out[3, 0] == 2.0
    assert np.array_equal(out[~mask], sat[~mask])  # measured cells and the diagonal untouched
    no_records = floors.floor_values(sat, mask)
    assert no_records[0, 2] == no_records[0, 3] == 2.0
    assert floors.floored_pairs(list("abcd"), mask) == [("a", "c"), ("a", "d")]
    assert "rule-of-three" in floors.describe(sat, mask, True) and "2.0000" in floors.describe(sat, mask, False)


def test_floors_no_longer_dominate_distances_map_and_clusters():
    """Blocks 0 and 2 never transfer to each other: the floor (ln 1e-8) breaks the eigengap, the clusters and the
    map; the treated matrix gives back the three blocks and distances on the scale of the measured pairs."""
    from satlab.sat.metric import floored

    sat, truth = block_matrix([4, 4, 4], seed=1)
    never = ((truth[:, None] == 0) & (truth[None, :] == 2)) | ((truth[:, None] == 2) & (truth[None, :] == 0))
    raw = np.where(never, FLOOR, sat)
    treated = floors.floor_values(raw, floored(raw))
    measured = clu.offdiag(np.where(never, np.nan, raw))
    span = np.nanmax(measured) - np.nanmin(measured)
    assert clu.sat_distance(raw).max() > 20  # the floor alone: 20 log units
    assert clu.sat_distance(treated).max() == pytest.approx(span)
    bad = clu.spectral_clusters(raw)
    assert bad.n_clusters == 2 and not same_partition(bad.labels, truth)
    good = clu.spectral_clusters(treated)
    assert good.n_clusters == 3 and same_partition(good.labels, truth)
    raw_map, map_ = clu.classical_mds(clu.sat_distance(raw)), clu.classical_mds(clu.sat_distance(treated))
    assert np.ptp(raw_map[:, 0]) > 20 and np.ptp(map_[:, 0]) < 2 * span


def test_structure_auc_and_twins_rank():
    """Same-family AUC is the Mann-Whitney probability; twins' rank counts the pairs above them."""
    from satlab.analysis.structure import family_auc, pair_ranks, structure

    names = ["a0", "a1", "b", "c"]
    fam = ["F", "F", "G", "G"]
    sat = np.array([[9, 4.0, 1.0, 2.0], [4.0, 9, 3.0, 1.5], [1.0, 3.0, 9, 2.5], [2.0, 1.5, 2.5, 9]])
    # same-family pairs: a0/a1 = 4.0, b/c = 2.5; cross: 1.0, 2.0, 3.0, 1.5 -> 4.0 beats 4, 2.5 beats 3 of 4
    auc, n_same, n_cross = family_auc(sat, fam)
    assert (n_same, n_cross) == (2, 4) and auc == pytest.approx(7 / 8)
    ranks = pair_ranks(sat)
    assert ranks[0, 1] == 1 and ranks[1, 2] == 2 and ranks[2, 3] == 3 and ranks[0, 2] == 6 and ranks[2, 1] == 2
    shape = structure(sat, names, fam, ["r", "r", "x", "y"])
    assert shape.twins == [("a0", "a1", 1)] and shape.n_pairs == 6
    assert "AUC 0.88" in shape.line() and "a0/a1 1" in shape.line()
    assert family_auc(sat, ["F", "G", "H", "I"])[0] is None  # no same-family pair: no AUC
    assert family_auc(np.where(np.eye(4, dtype=bool), 9, 1.0), fam)[0] == 0.5  # all ties: no structure


def test_structure_leaves_pairs_without_a_value_out():
    """experiment=smoke: the only same-family pair (the twins) is NaN. It must neither give AUC 0.00 nor rank first."""
    from satlab.analysis.structure import family_auc, pair_ranks, structure

    names, fam = ["a0", "a1", "b", "c"], ["F", "F", "G", "H"]
    nan = np.nan
    sat = np.array([[9, nan, nan, nan], [nan, 9, 3.0, 1.5], [nan, 3.0, 9, 2.5], [nan, 1.5, 2.5, 9]])
    shape = structure(sat, names, fam, ["r", "r", "x", "y"])
    assert shape.same_family_auc is None and (shape.n_same, shape.n_cross) == (1, 5)
    assert (shape.missing_same, shape.missing_cross) == (1, 2) and shape.twins == [("a0", "a1", None)]
    assert shape.line() == ("same-family vs cross-family AUC undefined (no same-family pair with a value) (1 vs 5 "
                            "pairs; 3 pair(s) without a value left out); twins' rank of 3 pairs: a0/a1 no value")
    ranks = pair_ranks(sat)
    assert ranks[0, 1] == ranks[0, 2] == ranks[0, 3] == 0 and (ranks[1, 2], ranks[2, 3], ranks[1, 3]) == (1, 2, 3)

    sat = np.array([[9, 4.0, 1.0, 2.0], [4.0, 9, nan, 1.5], [1.0, nan, 9, 2.5], [2.0, 1.5, 2.5, 9]])
    # same-family a0/a1 = 4.0, b/c = 2.5 against the cross pairs with a value 1.0, 2.0, 1.5: all above
    auc, n_same, n_cross = family_auc(sat, ["F", "F", "G", "G"])
    assert auc == 1.0 and (n_same, n_cross) == (2, 4)
    shape = structure(sat, names, ["F", "F", "G", "G"], ["r", "r", "x", "y"])
    assert shape.line() == ("same-family vs cross-family AUC 1.00 (2 vs 4 pairs; 1 pair(s) without a value left "
                            "out); twins' rank of 5 pairs: a0/a1 1")
    assert structure(sat, names, list("FGHI"), names).line() == (
        "same-family vs cross-family AUC undefined (no same-family pair) (0 vs 6 pairs; 1 pair(s) without a value "
        "left out)")


# A digits-zoo map (rounded; as printed by one `make demo`): its largest eigengap is at k = 8 of 9 models.
ZOO_MAP = [[4.61, 4.05, 2.8, 3.61, 3.27, 2.35, 2.42, 2.28, 2.95], [4.05, 4.61, 2.7, 3.57, 3.34, 2.09, 2.3, 2.2, 2.94],
           [2.8, 2.7, 4.61, 3.13, 2.74, 2.24, 2.27, 2.5, 2.69], [3.61, 3.57, 3.13, 4.61, 3.61, 3.01, 3.06, 3.24, 3.44],
           [3.27, 3.34, 2.74, 3.61, 4.61, 2.31, 2.59, 2.49, 2.8], [2.35, 2.09, 2.24, 3.01, 2.31, 4.56, 1.45, 1.54, 2.48],
           [2.42, 2.3, 2.27, 3.06, 2.59, 1.45, 4.61, 1.69, 2.06], [2.28, 2.2, 2.5, 3.24, 2.49, 1.54, 1.69, 4.61, 3.01],
           [2.95, 2.94, 2.69, 3.44, 2.8, 2.48, 2.06, 3.01, 4.61]]


def test_the_eigengap_never_leaves_most_clusters_with_one_model():
    """A small map's largest eigengap can split almost every model off (here k = 8 of 9, the most similar pair
    apart); the number of clusters is then the largest gap whose partition has at most half singletons, and the
    result says why. An explicit n_clusters is taken as given."""
    sat = np.array(ZOO_MAP)
    result = clu.spectral_clusters(sat, None, 8)
    sizes = np.bincount(result.labels)
    assert result.eigengap_k == 8 and result.n_clusters < 8 and 2 * (sizes == 1).sum() <= result.n_clusters
    assert result.labels[0] == result.labels[1]  # the two ResNet-18 seeds (SAT 4.05) stay together
    assert "would leave most clusters with a single model" in result.note
    forced = clu.spectral_clusters(sat, 8, 8)
    assert forced.n_clusters == 8 and forced.note == ""
