"""Ensemble math: combine rules and scores against hand computations, the exact top-k shortcut, teams, stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from satlab.analysis.consistency import kappa_matrix
from satlab.ensemble.combine import COMBINE_RULES, Scorer
from satlab.ensemble.pairs import pair_results
from satlab.ensemble.stats import column_corr, correlation_table, permutation_pvalue, resampled_kappa
from satlab.ensemble.teams import greedy, random_teams, team_table, top_accuracy
from satlab.utils import SatlabError

# 3 models x 4 images x 3 classes; labels 0, 1, 2, 1. Predictions: m0 [0,0,2,1], m1 [1,1,0,1], m2 [1,1,2,0].
PROBS = torch.tensor([
    [[0.799, 0.2, 0.001], [0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.1, 0.6, 0.3]],
    [[0.1, 0.5, 0.4], [0.3, 0.4, 0.3], [0.6, 0.1, 0.3], [0.2, 0.7, 0.1]],
    [[0.3, 0.4, 0.3], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]],
])
LABELS = [0, 1, 2, 1]
# Worked by hand: per-image correctness of each team under each rule. For instance image 0 of team (0, 1):
# mean softmax [0.4495, 0.35, 0.2005] -> 0 (right); product of probabilities [0.0799, 0.1, 0.0004] -> 1 (wrong);
# vote 0 vs 1 is a tie, the higher mean probability (0.4495) -> 0 (right).
EXPECTED = {
    "mean_softmax": {(0, 1): [1, 0, 1, 1], (0, 2): [1, 0, 1, 1], (1, 2): [0, 1, 1, 1], (0, 1, 2): [1, 0, 1, 1]},
    "mean_logits": {(0, 1): [0, 0, 1, 1], (0, 2): [1, 0, 1, 1], (1, 2): [0, 1, 1, 1], (0, 1, 2): [0, 0, 1, 1]},
    "vote": {(0, 1): [1, 0, 1, 1], (0, 2): [1, 0, 1, 1], (1, 2): [0, 1, 1, 1], (0, 1, 2): [0, 1, 1, 1]},
}


def scorer(rule, **kwargs):
    return Scorer(PROBS.log().half(), LABELS, rule, **kwargs)  # float16 log-probabilities, as cached


@pytest.mark.parametrize("rule", COMBINE_RULES)
def test_pair_and_team_accuracy_equal_hand_computation(rule):
    s = scorer(rule)
    np.testing.assert_array_equal(s.accuracy, [0.75, 0.5, 0.5])
    for team, hits in EXPECTED[rule].items():
        score = s.score(team)
        assert score.correct.int().tolist() == hits, (rule, team)
        assert score.accuracy == sum(hits) / 4
    table = pair_results(s, ["a", "b", "c"]).table
    for (a, b), hits in ((k, v) for k, v in EXPECTED[rule].items() if len(k) == 2):
        row = table[(table.model_a == "abc"[a]) & (table.model_b == "abc"[b])].iloc[0]
        best, mean = max(s.accuracy[a], s.accuracy[b]), (s.accuracy[a] + s.accuracy[b]) / 2
        assert row.accuracy == sum(hits) / 4
        assert row.gain_best == pytest.approx(sum(hits) / 4 - best)
        assert row.gain_mean == pytest.approx(sum(hits) / 4 - mean)
    # disagreement: m0 [0,0,2,1] vs m1 [1,1,0,1] differ on 3 of 4 images, m1 vs m2 on 2
    assert table.disagreement.tolist() == [0.75, 0.75, 0.5]


def test_nll_and_calibration_error_by_hand_and_torchmetrics():
    s = scorer("mean_softmax")
    score = s.score([0, 1])
    # p[label] of the mean: 0.899/2, 0.45/2, 1.0/2, 1.3/2
    expected_nll = -np.mean(np.log([0.4495, 0.225, 0.5, 0.65]))
    assert score.nll == pytest.approx(expected_nll, abs=2e-3)  # float16 storage
    stored = PROBS.log().half().float().exp()  # what the scorer sees (0.6 lands at a bin edge otherwise)
    mean = (stored[0] + stored[1]) / 2
    reference = multiclass_calibration_error(mean, torch.tensor(LABELS), num_classes=3, n_bins=15, norm="l1")
    assert score.ece == pytest.approx(float(reference), abs=2e-3)
    logits = scorer("mean_logits").score([0, 1])
    geo = torch.softmax((PROBS[0].log() + PROBS[1].log()) / 2, dim=1)
    assert logits.nll == pytest.approx(float(-geo[torch.arange(4), torch.tensor(LABELS)].log().mean()), abs=2e-3)
    assert math.isnan(scorer("vote").score([0, 1]).nll)


@pytest.mark.parametrize("rule", COMBINE_RULES)
def test_top_k_shortcut_is_exact(rule):
    """Few candidate classes (top=1 of 20) force the all-class fallback often; results equal brute force."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, 20, generator=gen) * 0.7
    labels = torch.randint(0, 20, (300,), generator=gen)
    log_probs = torch.log_softmax(logits, dim=2).half()
    fast, full = Scorer(log_probs, labels, rule, top=1), Scorer(log_probs, labels, rule, top=20)
    lp = log_probs.float()
    for team in ([0, 1], [1, 3], [0, 2, 3], [0, 1, 2, 3]):
        a, b = fast.score(team), full.score(team)
        assert torch.equal(a.correct, b.correct)
        if rule == "mean_softmax":
            brute = lp[team].exp().sum(0).argmax(1) == labels
        elif rule == "mean_logits":
            brute = lp[team].sum(0).argmax(1) == labels
        else:
            brute = b.correct
        assert torch.equal(a.correct, brute), (rule, team)
        assert a.nll == pytest.approx(b.nll, nan_ok=True) and a.ece == pytest.approx(b.ece, nan_ok=True)


def test_unknown_rule_is_a_satlab_error():
    with pytest.raises(SatlabError, match="ensemble.combine"):
        scorer("median")


def test_team_strategies():
    s = scorer("mean_softmax")
    sat = np.array([[4.6, 1.0, 2.0], [1.0, 4.6, 3.0], [2.0, 3.0, 4.6]])
    assert greedy(sat, s.accuracy, 2) == [0, 1]  # from the best model (0), the lowest SAT to it is model 1
    assert greedy(sat, s.accuracy, 2, most_similar=True) == [0, 2]
    assert top_accuracy(np.array([0.5, 0.9, 0.7]), 2) == [1, 2]
    assert random_teams(3, 2, 100, 0) == [(0, 1), (0, 2), (1, 2)]  # few possible teams: all of them
    assert len(random_teams(20, 3, 50, 0)) == 50
    teams, rand = team_table(s, ["a", "b", "c"], sat, [2, 3],
                             ["sat_diverse", "sat_similar", "top_accuracy", "random"])
    row = teams[(teams.strategy == "sat_diverse") & (teams.k == 2)].iloc[0]
    assert row.members == "a;b" and row.accuracy == 0.75 and row.gain_best == 0.0
    assert row.random_percentile == 50.0  # all three pairs reach 0.75
    three = teams[(teams.strategy == "top_accuracy") & (teams.k == 3)].iloc[0]
    assert three.accuracy == sum(EXPECTED["mean_softmax"][(0, 1, 2)]) / 4
    np.testing.assert_array_equal(rand[2], [0.75, 0.75, 0.75])
    with pytest.raises(SatlabError, match="team_sizes"):
        team_table(s, ["a", "b", "c"], sat, [4], ["random"])
    with pytest.raises(SatlabError, match="team_sizes"):
        team_table(s, ["a", "b", "c"], sat, [1], ["random"])
    with pytest.raises(SatlabError, match="strategies"):
        team_table(s, ["a", "b", "c"], sat, [2], ["sat_best"])


def test_stats_kappa_resampling_and_correlations():
    rng = np.random.default_rng(0)
    hits = rng.random((5, 200)) < 0.8
    first, second = np.triu_indices(5, k=1)
    kappa = kappa_matrix(hits)
    np.testing.assert_allclose(resampled_kappa(hits, first, second, np.ones((1, 200), np.float32))[:, 0],
                               kappa[first, second], atol=1e-5)
    x = np.arange(10.0)
    assert column_corr(x, x**3, "spearman")[0] == pytest.approx(1.0)
    assert column_corr(x, -x, "pearson")[0] == pytest.approx(-1.0)
    # a predictor equal to the target up to a monotone map: every permutation gives |r| <= r, so p is small
    matrix = rng.random((8, 8))
    matrix = matrix + matrix.T
    f, s = np.triu_indices(8, k=1)
    p = permutation_pvalue(matrix[f, s] ** 2, matrix, f, s, "spearman", 200, 0)
    assert p < 0.05
    pair_hits = hits[first] | hits[second]
    table = correlation_table(pair_hits, hits, first, second, matrix[:5, :5], n_boot=50, n_perm=50)
    assert set(table.predictor) == {"sat", "kappa"} and len(table) == 8
    ok = table.dropna()
    assert ((ok.ci_low <= ok.r + 1e-9) | (ok.ci_high >= ok.r - 1e-9)).all() and (ok.p_perm > 0).all()


def test_digits_eval_noise_is_a_harder_eval_variant_only():
    from satlab.data import data_fingerprint
    from satlab.data.digits import digits

    clean, noisy, again = digits(samples_per_class=3), digits(samples_per_class=3, eval_noise=0.1), \
        digits(samples_per_class=3, eval_noise=0.1)
    assert torch.equal(clean.train.images, noisy.train.images)  # the zoo's training data is untouched
    assert np.array_equal(clean.eval.ids, noisy.eval.ids) and np.array_equal(clean.eval.labels, noisy.eval.labels)
    diff = (noisy.eval.images.float() - clean.eval.images.float()) / 255.0
    assert 0.05 < float(diff.std()) < 0.12  # clipping at 0 and 1 removes some of the 0.1
    assert torch.equal(noisy.eval.images, again.eval.images)  # fixed per image
    assert data_fingerprint(noisy.eval) != data_fingerprint(clean.eval)
    with pytest.raises(SatlabError, match="eval_noise"):
        digits(eval_noise=-0.1)
