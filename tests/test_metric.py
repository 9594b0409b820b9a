"""The SAT formula on hand-computed cases, and the records / matrix files."""

import math

import numpy as np
import pytest

from satlab.sat import metric
from satlab.sat.records import Records, load_records, read_matrix, save_records, write_matrix
from satlab.utils import SatlabError


def _two_models():
    # 4 samples; A right on 0,1,2; B right on 1,2,3 -> X_AB = {1, 2}
    correct = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=bool)
    fooled = np.zeros((2, 2, 4), dtype=bool)
    fooled[0, 0, [0, 1, 2]] = True  # A's white-box attack succeeds everywhere
    fooled[1, 1, [1, 2]] = True  # B's white-box attack succeeds on 2 of its 3
    fooled[0, 1, 1] = True  # A's adversarial example of sample 1 fools B
    fooled[1, 0, [1, 2]] = True  # B's adversarial examples of samples 1 and 2 fool A
    fooled[0, 1, 3] = True  # outside X_AB: must be ignored
    return correct, fooled


def test_sat_hand_computed():
    correct, fooled = _two_models()
    sat = metric.sat_matrix(correct, fooled)
    # off-diagonal: 100 / (2 * 2) * (1 + 2) = 75 %
    assert sat[0, 1] == pytest.approx(math.log(75.0))
    assert sat[1, 0] == sat[0, 1]
    # diagonal: X_AA = A's 3 correct samples, all fooled -> 100 / (2*3) * (3 + 3) = 100 %
    assert sat[0, 0] == pytest.approx(math.log(100.0))
    # B: fooled on 2 of its 3 correct samples -> 66.7 %
    assert sat[1, 1] == pytest.approx(math.log(200.0 / 3.0))


def test_transfer_rates_are_asymmetric_and_ignore_outside_x_ab():
    correct, fooled = _two_models()
    rates = metric.transfer_rates(correct, fooled)
    assert rates[0, 1] == pytest.approx(50.0)  # 1 of X_AB's 2 samples
    assert rates[1, 0] == pytest.approx(100.0)
    assert metric.joint_correct(correct).tolist() == [[3, 2], [2, 3]]
    assert metric.whitebox_success(correct, fooled) == pytest.approx([100.0, 200.0 / 3.0])


def test_eps_floor_and_natural_log():
    correct = np.ones((2, 5), dtype=bool)
    fooled = np.zeros((2, 2, 5), dtype=bool)  # nothing transfers, nothing is fooled
    assert metric.sat_matrix(correct, fooled, eps_s=1e-3)[0, 1] == pytest.approx(math.log(1e-3))
    assert metric.sat_matrix(correct, fooled)[0, 1] == pytest.approx(math.log(metric.DEFAULT_EPS_S))
    fooled[:] = True
    assert metric.sat_matrix(correct, fooled)[0, 1] == pytest.approx(math.log(100.0))  # natural, not log10
    with pytest.raises(ValueError):
        metric.sat_matrix(correct, fooled, eps_s=0)


def test_empty_x_ab_gives_nan_and_warning():
    correct = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    fooled = np.ones((2, 2, 4), dtype=bool)
    with pytest.warns(RuntimeWarning, match="empty X_AB"):
        sat = metric.sat_matrix(correct, fooled)
    assert np.isnan(sat[0, 1]) and np.isnan(sat[1, 0])
    assert np.isfinite(np.diagonal(sat)).all()


def test_symmetric_and_diagonal_at_most_ln100_on_random_records():
    rng = np.random.default_rng(0)
    correct = rng.random((6, 200)) < 0.8
    fooled = rng.random((6, 6, 200)) < 0.4
    sat = metric.sat_matrix(correct, fooled)
    np.testing.assert_allclose(sat, sat.T)
    assert (np.diagonal(sat) <= math.log(100.0) + 1e-12).all()


def test_records_round_trip_and_validation(tmp_path):
    correct, fooled = _two_models()
    rec = Records(["a", "b"], np.arange(4) + 10, np.array([0, 1, 2, 3]), correct, fooled)
    path = save_records(tmp_path / "records.npz", rec)
    back = load_records(path)
    assert back.models == ["a", "b"]
    assert (back.fooled == fooled).all() and (back.correct == correct).all()
    assert back.sample_ids.tolist() == [10, 11, 12, 13]
    with pytest.raises(SatlabError, match="fooled"):
        Records(["a", "b"], np.arange(4), np.arange(4), correct, fooled[:, :, :3])
    with pytest.raises(SatlabError, match="not found"):
        load_records(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(SatlabError, match="not a valid"):
        load_records(tmp_path / "bad.npz")


def test_matrix_csv_round_trip_and_errors(tmp_path):
    m = np.array([[4.6, 2.5], [2.5, 4.6]])
    path = write_matrix(tmp_path / "m.csv", ["a", "b"], m)
    names, back = read_matrix(path, symmetric_tol=1e-9)
    assert names == ["a", "b"] and np.allclose(back, m)
    (tmp_path / "asym.csv").write_text(",a,b\na,1,2\nb,3,1\n")
    with pytest.raises(SatlabError, match="not symmetric"):
        read_matrix(tmp_path / "asym.csv", symmetric_tol=1e-3)
    (tmp_path / "text.csv").write_text(",a,b\na,1,x\nb,2,1\n")
    with pytest.raises(SatlabError, match="not a number"):
        read_matrix(tmp_path / "text.csv")
    (tmp_path / "rect.csv").write_text(",a,b\na,1,2\n")
    with pytest.raises(SatlabError, match="not square"):
        read_matrix(tmp_path / "rect.csv")


# ---------------------------------------------------------------- bootstrap CIs, floors, the per-pair table
def _known_rates(n_samples: int, p_ab: float, p_ba: float, seed: int = 0):
    """Two models right on every image; A's examples fool B with probability p_ab, B's fool A with p_ba."""
    rng = np.random.default_rng(seed)
    correct = np.ones((2, n_samples), dtype=bool)
    fooled = np.zeros((2, 2, n_samples), dtype=bool)
    fooled[0, 0] = fooled[1, 1] = True
    fooled[0, 1] = rng.random(n_samples) < p_ab
    fooled[1, 0] = rng.random(n_samples) < p_ba
    return correct, fooled


def test_bootstrap_ci_contains_the_truth_and_narrows_with_more_images():
    truth = math.log(100 * (0.3 + 0.1) / 2)  # ln 20
    widths = []
    for n_samples in (200, 3200):
        correct, fooled = _known_rates(n_samples, 0.3, 0.1)
        low, high = metric.sat_bootstrap(correct, fooled, n_boot=2000, seed=1)
        assert low[0, 1] == low[1, 0] and high[0, 1] == high[1, 0]
        assert low[0, 1] < truth < high[0, 1]
        sat = metric.sat_matrix(correct, fooled)[0, 1]
        assert low[0, 1] < sat < high[0, 1]
        widths.append(high[0, 1] - low[0, 1])
    # the standard error shrinks as 1/sqrt(S): 16x the images -> about a quarter of the width
    assert 0.15 < widths[1] / widths[0] < 0.4
    # the width matches the delta method: se(ln r) = sqrt(var) / r with var = (p(1-p) + q(1-q)) / (4S)
    se = math.sqrt((0.3 * 0.7 + 0.1 * 0.9) / (4 * 3200)) / 0.2
    assert widths[1] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_is_seeded_and_equals_the_plain_loop():
    rng = np.random.default_rng(3)
    correct = rng.random((4, 60)) < 0.8
    fooled = rng.random((4, 4, 60)) < 0.4
    low, high = metric.sat_bootstrap(correct, fooled, n_boot=300, seed=7, chunk=64)
    again = metric.sat_bootstrap(correct, fooled, n_boot=300, seed=7, chunk=300)
    assert np.array_equal(low, again[0]) and np.array_equal(high, again[1])  # chunking does not change draws
    other = metric.sat_bootstrap(correct, fooled, n_boot=300, seed=8)
    assert not np.array_equal(low, other[0])
    draws = np.random.default_rng(7).integers(0, 60, size=(300, 60))  # the same resamples, one at a time
    sats = np.stack([metric.sat_matrix(correct[:, d], fooled[:, :, d]) for d in draws])
    np.testing.assert_allclose(low, np.percentile(sats, 2.5, axis=0), rtol=1e-6)
    np.testing.assert_allclose(high, np.percentile(sats, 97.5, axis=0), rtol=1e-6)


def test_bootstrap_floored_and_empty_pairs():
    correct = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=bool)
    fooled = np.zeros((3, 3, 5), dtype=bool)  # nothing transfers
    low, high = metric.sat_bootstrap(correct, fooled, n_boot=200, seed=0)
    # no event at all: from the floor to the rule-of-three bound 300 / (2 |X_AB|) = 50 %
    assert low[0, 1] == pytest.approx(math.log(metric.DEFAULT_EPS_S)) and high[0, 1] == pytest.approx(math.log(50))
    assert np.isnan(low[0, 2]) and np.isnan(high[1, 2])  # X_AB empty in every resample
    with pytest.raises(ValueError, match="n_boot"):
        metric.sat_bootstrap(correct, fooled, n_boot=0)


def test_floored_cells_survive_csv_rounding(tmp_path):
    sat = np.array([[4.6, math.log(1e-8)], [math.log(1e-8), 4.6]])
    _, back = read_matrix(write_matrix(tmp_path / "m.csv", ["a", "b"], sat))
    assert metric.floored(back).tolist() == [[False, True], [True, False]]
    assert not metric.floored(np.array([[np.nan, math.log(1e-3)]])).any()
    assert metric.floored(np.array([[math.log(1e-3)]]), eps_s=1e-3).all()


def test_pair_table_columns_and_values():
    correct, fooled = _two_models()
    correct = np.vstack([correct, [1, 1, 1, 1]])
    fooled = np.pad(fooled, ((0, 1), (0, 1), (0, 0)))  # a third model nothing transfers to or from
    table = metric.pair_table(["a", "b", "c"], correct, fooled, n_boot=200, seed=0)
    assert list(table) == ["model_a", "model_b", "sat", "ci_low", "ci_high", "n_joint", "transfer_ab",
                           "transfer_ba", "floored"]
    assert table["model_a"].tolist() == ["a", "a", "b"] and table["model_b"].tolist() == ["b", "c", "c"]
    assert table["sat"][0] == pytest.approx(math.log(75.0)) and table["n_joint"].tolist() == [2, 3, 3]
    assert table["transfer_ab"][0] == pytest.approx(50.0) and table["transfer_ba"][0] == pytest.approx(100.0)
    assert table["floored"].tolist() == [False, True, True]
    assert table["ci_low"][0] <= table["sat"][0] <= table["ci_high"][0]
    none = metric.pair_table(["a", "b", "c"], correct, fooled, n_boot=0)
    assert np.isnan(none["ci_low"]).all() and np.array_equal(none["sat"], table["sat"])
