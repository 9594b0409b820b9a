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
