"""task=ensemble end to end: one forward pass per model, a content-keyed cache, outputs, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from satlab.cli import run
from satlab.data.common import TensorImages
from satlab.ensemble.predict import predict_log_probs
from satlab.models import ModelSet
from satlab.models.wrapper import PixelModel
from satlab.sat.records import write_matrix
from satlab.utils import SatlabError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
TINY = ["task=ensemble", "model_set=timm_tiny", "dataset.samples_per_class=2", "ensemble.n_bootstrap=20",
        "ensemble.n_permutations=20", "ensemble.random_teams=5"]
OUTPUTS = ("ensemble_pairs.csv", "ensemble_teams.csv", "gain_vs_sat.png", "teams.png", "report.md", "summary.json")
NAMES = ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"]


class Counting(nn.Module):
    """A linear classifier on pixels that counts its forward calls."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def tiny_data(seed: int = 0) -> TensorImages:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (12, 3, 4, 4), generator=gen, dtype=torch.uint8)
    return TensorImages(images, np.arange(12) % 5, np.arange(12))


def passes(models, data, cache):
    wrapped = [PixelModel(m, (0.5,) * 3, (0.5,) * 3, (4, 4)) for m in models]
    before = [m.calls for m in models]
    result = predict_log_probs(ModelSet.from_models(["a", "b", "c"], wrapped), data, batch_size=64, cache_dir=cache, trainer_cfg={"accelerator": "cpu", "enable_progress_bar": False})
    return result, sum(m.calls for m in models) - sum(before)


def test_one_forward_pass_per_model_then_none_and_content_keyed_cache(tmp_path, one_thread):
    models = [Counting(s) for s in range(3)]
    first, calls = passes(models, tiny_data(), tmp_path)
    assert calls == 3 and first.computed == ["a", "b", "c"] and first.reused == []  # 12 images, 1 batch each
    assert first.log_probs.shape == (3, 12, 5) and first.log_probs.dtype == torch.float16
    expected = torch.log_softmax(models[1].net((tiny_data()[0][0][None] - 0.5) / 0.5), 1)
    assert torch.allclose(first.log_probs[1, 0].float(), expected[0], atol=1e-2)
    again, calls = passes(models, tiny_data(), tmp_path)
    assert calls == 0 and again.computed == [] and again.reused == ["a", "b", "c"]
    assert torch.equal(again.log_probs, first.log_probs)
    other, calls = passes(models, tiny_data(seed=1), tmp_path)  # same ids and labels, other pixels
    assert calls == 3 and other.computed == ["a", "b", "c"]
    with torch.no_grad():
        models[2].net[1].bias.add_(1.0)  # new weights for model c only
    changed, calls = passes(models, tiny_data(), tmp_path)
    assert calls == 1 and changed.computed == ["c"] and changed.reused == ["a", "b"]


def test_damaged_cached_predictions_are_named_and_computed_again(tmp_path, one_thread, caplog):
    models = [Counting(s) for s in range(3)]
    first, _ = passes(models, tiny_data(), tmp_path)
    (stored,) = (tmp_path / "probs").glob("b-*.npz")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed in place
    stored.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="satlab"):
        again, calls = passes(models, tiny_data(), tmp_path)
    assert calls == 1 and again.computed == ["b"] and torch.equal(again.log_probs, first.log_probs)
    assert any(str(stored) in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)


def compose_cfg(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*FAST, f"paths.output_dir={tmp_path / 'out'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


def sat_file(tmp_path, names=NAMES) -> Path:
    rng = np.random.default_rng(0)
    sat = rng.random((len(names), len(names))) * 4
    return write_matrix(tmp_path / "sat_matrix.csv", names, 0.5 * (sat + sat.T))


def test_tiny_run_writes_every_output_and_reruns_from_the_cache(tmp_path, one_thread):
    matrix = sat_file(tmp_path)
    summary = run(compose_cfg([*TINY, f"ensemble.sat_matrix={matrix}"], tmp_path))
    out = tmp_path / "out"
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert summary["forward_passes"]["computed"] == NAMES and summary["team_sizes"] == [2, 3, 4]
    pairs = pd.read_csv(out / "ensemble_pairs.csv")
    assert len(pairs) == 6 and {"sat", "kappa", "gain_best", "nll", "ece", "disagreement"} <= set(pairs.columns)
    # the pair accuracy is consistent with its gains and the members' accuracies
    np.testing.assert_allclose(pairs.gain_best, pairs.accuracy - np.maximum(pairs.acc_a, pairs.acc_b), atol=1e-5)
    teams = pd.read_csv(out / "ensemble_teams.csv")
    assert set(teams.strategy) >= {"sat_diverse", "sat_clusters", "sat_similar", "top_accuracy", "random_p50"}
    assert "Ensembles" in (out / "report.md").read_text()
    again = run(compose_cfg([*TINY, f"ensemble.sat_matrix={matrix}"], tmp_path))
    assert again["forward_passes"]["computed"] == [] and again["forward_passes"]["reused"] == NAMES
    assert json.loads((out / "summary.json").read_text())["accuracy"] == summary["accuracy"]


@pytest.mark.parametrize("overrides, needle", [
    (["ensemble.team_sizes=[2,5]"], "team_sizes"),
    (["ensemble.team_sizes=[1]"], "team_sizes"),
    (["ensemble.strategies=[sat_diverse,best]"], "strategies"),
    (["ensemble.combine=median"], "ensemble.combine"),
    (["ensemble.n_bootstrap=0"], "n_bootstrap"),
])
def test_bad_options_raise_before_any_output(overrides, needle, tmp_path):
    cfg = compose_cfg([*TINY, f"ensemble.sat_matrix={sat_file(tmp_path)}", *overrides], tmp_path)
    with pytest.raises(SatlabError, match=needle):
        run(cfg)
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)


def test_cli_matrix_of_other_models_is_one_error_line_and_no_results(tmp_path, satlab_in_process):
    matrix = sat_file(tmp_path, ["test_resnet", "test_vit", "resnet50"])
    done = satlab_in_process([*TINY, *FAST, f"ensemble.sat_matrix={matrix}", "hydra.run.dir=run"], tmp_path,
                             {"SATLAB_CACHE_DIR": str(tmp_path / "cache")})
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert done.returncode == 2 and lines[-1].startswith("satlab: error:") and "Traceback" not in done.stderr
    assert "test_convnext" in lines[-1] and "lacks 2 model(s)" in lines[-1]
    assert not any((tmp_path / "run" / name).exists() for name in OUTPUTS)


def test_presets_compose(tmp_path):
    digits = compose_cfg(["experiment=ensemble_digits"], tmp_path)
    assert digits.task.name == "ensemble" and digits.dataset.eval_noise == 0.1
    paper = compose_cfg(["experiment=paper69_ensemble", "dataset.root=/data/val"], tmp_path)
    assert paper.task.name == "ensemble" and len(paper.model_set.models) == 68
    with pytest.raises(SatlabError, match="ensemble.sat_matrix"):
        run(paper)


RELEASED = next((p / "shared" / "reference" / "sat-official" / "SAT_release.csv" for p in (ROOT.parent, ROOT.parents[1])
                 if (p / "shared" / "reference" / "sat-official" / "SAT_release.csv").is_file()), None)


@pytest.mark.skipif(RELEASED is None, reason="the paper's SAT_release.csv is not in ../shared/reference/sat-official/")
def test_released_matrix_serves_as_sat_for_paper69(tmp_path):
    from satlab.tasks.ensemble import load_sat

    paper = compose_cfg(["experiment=paper69_ensemble", "dataset.root=/data/val"], tmp_path)
    names = list(paper.model_set.models)
    sat = load_sat(RELEASED, names, 1e-6)
    assert sat.shape == (68, 68) and np.allclose(sat, sat.T)
    assert np.isfinite(sat[np.triu_indices(68, 1)]).all()
    with pytest.raises(SatlabError, match="lacks 1 model"):
        load_sat(RELEASED, [*names[:3], "digits_only_model"], 1e-6)


def test_without_a_matrix_sat_is_computed_in_the_run(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # no outputs/sat/* runs to find here
    summary = run(compose_cfg([*TINY, "attack=fgsm", "ensemble.team_sizes=[2]"], tmp_path))
    assert summary["sat_computed_here"] and (tmp_path / "out" / "sat_matrix.csv").is_file()
    pairs = pd.read_csv(tmp_path / "out" / "ensemble_pairs.csv")
    assert len(pairs) == 6 and set(pd.read_csv(tmp_path / "out" / "ensemble_teams.csv").k) == {2}
    with pytest.raises(SatlabError, match="compute_sat"):
        run(compose_cfg([*TINY, "ensemble.compute_sat=false"], tmp_path / "again"))


def test_a_sat_run_is_reused_only_for_the_same_weights(tmp_path, monkeypatch, one_thread):
    """The newest task=sat run is used only if it ran what this run would: the same model keys (weights +
    preprocessing; same names with other weights, a retrained zoo, must not pass) and the same records context
    (the attack as it ran, the images, the seed): a budget written as 7 digits (0.1254902) is 32/255, the default."""
    monkeypatch.chdir(tmp_path)
    sat_dir = tmp_path / "outputs" / "sat" / "run1"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        sat_cfg = compose("config", overrides=[*FAST, "task=sat", "model_set=timm_tiny", "dataset.samples_per_class=2",
                                               "attack=fgsm", "attack.eps=0.1254902", "sat.n_bootstrap=0",
                                               "sat.print_table=false",
                                               f"paths.output_dir={sat_dir}", f"paths.cache_dir={tmp_path / 'cache'}"])
    sat_summary = run(sat_cfg)
    assert set(sat_summary["model_keys"]) == set(NAMES)
    found = run(compose_cfg([*TINY, "attack=fgsm", "ensemble.team_sizes=[2]"], tmp_path / "a"))
    assert not found["sat_computed_here"] and found["sat_matrix"] == str((sat_dir / "sat_matrix.csv").resolve())
    smaller = run(compose_cfg([*TINY, "attack=fgsm", "attack.eps=0.0627451", "ensemble.team_sizes=[2]"],
                              tmp_path / "eps16"))
    assert smaller["sat_computed_here"]  # another budget: another map
    summary_file = sat_dir / "summary.json"
    stored = json.loads(summary_file.read_text())
    stored["model_keys"][NAMES[0]] = "other-weights"
    summary_file.write_text(json.dumps(stored))
    other = run(compose_cfg([*TINY, "attack=fgsm", "ensemble.team_sizes=[2]"], tmp_path / "b"))
    assert other["sat_computed_here"]
