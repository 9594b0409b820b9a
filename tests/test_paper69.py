"""The paper69 model set: the SAT paper's 69 timm models, their pinned timm 1.0 weights and components.

Offline and fast: nothing is downloaded or built, only timm's registry is consulted. The checks against the
paper's released files skip when ../shared/reference/sat-official/ is absent.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import timm
from omegaconf import OmegaConf
from timm.models import get_deprecated_models, get_pretrained_cfg

from satlab.models.specs import COMPONENTS, model_specs

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "conf" / "model_set" / "paper69.yaml"
DOC = REPO / "docs" / "paper69.md"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sat-official"

NOT_BUILDABLE_PREFIX = "NOT BUILDABLE with timm 1.0.31"
NOT_BUILDABLE = {"gluon_xception65"}  # the paper models that timm 1.0.31 cannot build, as documented
RENAMED = {"jx_nest_tiny": "nest_tiny_jx.goog_in1k", "gluon_resnet101_v1c": "resnet101c.gluon_in1k"}
NON_DEFAULT = {  # weights timm 0.6 loaded for the name, which are not timm 1.0's default tag
    "convnext_tiny": "convnext_tiny.fb_in1k",
    "seresnet50": "seresnet50.ra2_in1k",
    "regnetx_320": "regnetx_320.pycls_in1k",
}


@pytest.fixture(scope="module")
def cfg():
    return OmegaConf.load(CONFIG)


@pytest.fixture(scope="module")
def specs(cfg):
    return model_specs(cfg)


def _reference(name: str) -> list[list[str]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"the SAT paper's released {name} is not at {path} (reference data outside the repo)")
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f) if row]


def test_specs_resolve_to_69_pretrained_models(cfg, specs):
    assert cfg.name == "paper69" and cfg.num_classes == 1000 and cfg.pretrained is True
    assert len(specs) == 69
    names = [s.name for s in specs]
    assert len(set(names)) == 69
    assert names == list(cfg.models)
    assert set(cfg.catalog) == set(names)
    for spec in specs:
        assert spec.pretrained, spec.name
        assert spec.checkpoint_path is None and not spec.model_args and spec.train_seed is None
        assert tuple(spec.components) == COMPONENTS, spec.name  # all 13, in the released table's column order
        assert all(isinstance(v, str) and v for v in spec.components.values()), spec.name
        assert spec.family == spec.components["base_architecture"], spec.name
        assert spec.note.strip(), f"{spec.name}: every mapping says why in its note"


def test_every_timm_name_is_pinned_and_in_timm(specs):
    pretrained = set(timm.list_pretrained())
    for spec in specs:
        arch, _, tag = spec.timm_name.partition(".")
        if spec.name in NOT_BUILDABLE:
            assert not timm.is_model(arch), f"{spec.name}: timm builds '{arch}' now; map it and drop the note"
            continue
        assert timm.is_model(arch), f"{spec.name}: '{arch}' is not a timm architecture"
        assert tag, f"{spec.name}: '{spec.timm_name}' has no pinned pretrained tag"
        assert spec.timm_name in pretrained, f"{spec.name}: '{spec.timm_name}' is not in timm.list_pretrained()"


def test_not_buildable_models_are_exactly_the_documented_ones(cfg, specs):
    documented = {s.name for s in specs if s.note.startswith(NOT_BUILDABLE_PREFIX)}
    assert documented == NOT_BUILDABLE
    unbuildable = {s.name for s in specs if not timm.is_model(s.timm_name.partition(".")[0])}
    assert unbuildable == NOT_BUILDABLE
    # models_timm1: the paper's order without them, so `model_set.models=${model_set.models_timm1}` runs
    assert list(cfg.models_timm1) == [n for n in cfg.models if n not in NOT_BUILDABLE]
    runnable = model_specs({**OmegaConf.to_container(cfg), "models": list(cfg.models_timm1)})
    assert len(runnable) == 68 and all(timm.is_model(s.timm_name.split(".")[0]) for s in runnable)
    doc = DOC.read_text()
    for name in NOT_BUILDABLE:
        assert f"## `{name}`" in doc, f"docs/paper69.md has no section on why {name} cannot be built"


def test_renamed_and_non_default_pins(specs):
    by_name = {s.name: s for s in specs}
    deprecated = get_deprecated_models()
    for paper_name, timm_name in RENAMED.items():
        spec = by_name[paper_name]
        assert spec.timm_name == timm_name
        assert spec.note.startswith("RENAMED")
        # timm's own deprecation map sends the paper's name to this architecture (and this tag, when it has one)
        target = deprecated[paper_name]
        assert timm_name == target or timm_name.split(".")[0] == target, (paper_name, target)
    for paper_name, timm_name in NON_DEFAULT.items():
        spec = by_name[paper_name]
        arch = timm_name.split(".")[0]
        assert spec.timm_name == timm_name
        assert spec.note.startswith("NON-DEFAULT TAG")
        assert f"{arch}.{get_pretrained_cfg(arch).tag}" != timm_name, f"{paper_name}: pin is timm's default now"
    # every other buildable pin is either today's default tag or the only tag, and says which 0.6 weights it is
    for spec in specs:
        if spec.name in NOT_BUILDABLE or spec.name in RENAMED or spec.name in NON_DEFAULT:
            continue
        arch = spec.timm_name.split(".")[0]
        assert arch == spec.name, f"{spec.name}: renamed to '{arch}' without a RENAMED note"
        default = f"{arch}.{get_pretrained_cfg(arch).tag}"
        assert spec.timm_name == default, (
            f"{spec.name}: timm's default is now {default}; the pin ({spec.timm_name}, the timm 0.6 weights) "
            "stays, add it to NON_DEFAULT and mark its note NON-DEFAULT TAG"
        )


def test_doc_table_matches_the_config(specs):
    doc = DOC.read_text()
    for spec in specs:
        assert f"| `{spec.name}` | `{spec.timm_name}` |" in doc, f"docs/paper69.md lacks the row of {spec.name}"


def test_names_and_order_match_released_sat_matrix(cfg):
    header = _reference("SAT_release.csv")[0]
    assert header[0] == ""
    assert list(cfg.models) == header[1:]


def test_components_match_released_model_features(specs):
    rows = _reference("model_features.csv")
    header, body = rows[0], rows[1:]
    assert header[0] == "Model name" and len(header) == 1 + len(COMPONENTS)
    table = {row[0]: dict(zip(COMPONENTS, row[1:])) for row in body}
    assert len(table) == len(body) == 69
    assert set(table) == {s.name for s in specs}
    for spec in specs:
        for key in COMPONENTS:
            assert spec.components[key] == table[spec.name][key], (spec.name, key)


def test_released_matrix_shows_family_structure():
    """The README's fact: by base architecture, the released matrix's same-family AUC is 0.81 (845 vs 1,501 pairs)."""
    from satlab.analysis.structure import family_auc
    from satlab.sat.records import read_matrix

    rows = _reference("model_features.csv")
    family = {row[0]: row[1] for row in rows[1:]}
    _reference("SAT_release.csv")
    names, sat = read_matrix(REFERENCE / "SAT_release.csv")
    auc, n_same, n_cross = family_auc(0.5 * (sat + sat.T), [family[n] for n in names])
    assert (n_same, n_cross) == (845, 1501) and auc == pytest.approx(0.8137, abs=5e-4)


# The README's 10 spectral clusters of the released matrix (`analyze.n_clusters=10`), a reference partition.
README_CLUSTERS = [
    "nfnet_l0 eca_nfnet_l0 botnet26t_256 resnetv2_50d_evos resnest50d gcresnext50ts eca_halonext26ts "
    "eca_botnext26ts_256",
    "regnety_032 fbnetv3_g efficientnet_b2 mixnet_xl rexnet_150 gcresnet50t eca_resnet33ts nf_regnet_b1",
    "twins_pcpvt_base coat_lite_small convnext_tiny twins_svt_small jx_nest_tiny resmlp_big_24_224 swin_s3_tiny_224 "
    "swin_tiny_patch4_window7_224",
    "xcit_medium_24_p16_224 pit_b_224 visformer_small tnt_s_patch16_224 haloregnetz_b pit_s_224 xcit_tiny_12_p8_224",
    "convit_base crossvit_base_240 deit_base_patch16_224 gmlp_s16_224 vit_small_patch16_224 deit_small_patch16_224 "
    "resmlp_24_224",
    "vit_small_r26_s32_224 ese_vovnet39b vit_base_patch32_224",
    "halonet50ts lamhalobotnet50ts_256 sebotnet33ts_256 lambda_resnet50ts sehalonet33ts halo2botnet50ts_256",
    "wide_resnet50_2 seresnext50_32x4d resnext50_32x4d resnetv2_50 resnet50 seresnet50 dpn107 resnetblur50 "
    "resnetv2_101 resnet101 gluon_xception65 resnet50_gn",
    "convmixer_1536_20 regnetx_320 hrnet_w64 dla102x2 poolformer_m48 gluon_resnet101_v1c",
    "nf_resnet50 cspdarknet53 cspresnext50 cspresnet50",
]


def test_released_matrix_clusters_are_the_readme_partition_and_scikit_learns():
    """Spectral clustering (our dense embedding, scikit-learn's CLUSTER_QR) of the released matrix gives the README's
    10 clusters, numbered as there, and the partition of SpectralClustering(assign_labels="cluster_qr") itself;
    the eigengap's 2 clusters split 49 models from 20."""
    import numpy as np
    from sklearn.cluster import SpectralClustering

    from satlab.analysis.clustering import sat_affinity, spectral_clusters
    from satlab.sat.records import read_matrix

    _reference("SAT_release.csv")
    names, sat = read_matrix(REFERENCE / "SAT_release.csv")
    cluster_of = {m: c for c, members in enumerate(README_CLUSTERS) for m in members.split()}
    assert sorted(cluster_of) == sorted(names)
    labels = spectral_clusters(sat, n_clusters=10).labels
    assert labels.tolist() == [cluster_of[n] for n in names]
    theirs = SpectralClustering(10, affinity="precomputed", assign_labels="cluster_qr",
                                random_state=0).fit(sat_affinity(sat)).labels_
    assert len({(a, b) for a, b in zip(labels, theirs)}) == len(set(theirs)) == 10  # same partition, relabelled
    assert sorted(np.bincount(spectral_clusters(sat).labels).tolist()) == [20, 49]
