"""The attacks against torchattacks as an oracle, plus budgets, 8-bit quantization, seeding and config errors.

One small random timm model (float32, eval mode, seeded) on random 8-bit images; labels are the model's own
clean predictions, so every image starts correctly classified and each attack has something to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
import torchattacks
from hydra.utils import instantiate
from omegaconf import OmegaConf

from satlab.attacks import Attack, attack_loss, create_attack, list_attacks
from satlab.attacks.rounding import round_l2
from satlab.models.wrapper import PixelModel
from satlab.utils import SatlabError

CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"
B = 16  # a power of two: the mean-reduced loss of torchattacks is then our summed loss scaled exactly by 1/B
LINF_ATTACKS = ("pgd_linf", "fgsm", "mifgsm")


pytestmark = pytest.mark.usefixtures("one_thread")


def random_convnext(num_classes: int, size: int) -> PixelModel:
    """A frozen random ConvNeXt, seeded (test_resnet's random init predicts one class for every input)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        inner = timm.create_model("test_convnext", num_classes=num_classes)
    net = PixelModel.from_timm(inner, {"input_size": (3, size, size)}).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def model() -> PixelModel:
    return random_convnext(10, 32)


@pytest.fixture(scope="module")
def data(model):
    """x [B,3,32,32] on 8-bit levels in [0,1]; y the model's clean predictions."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (B, 3, 32, 32), generator=gen).float() / 255
    with torch.no_grad():
        y = model(x).argmax(1)
    assert len(set(y.tolist())) >= 3, "the random model should not predict one class for everything"
    return x, y


def predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# --- torchattacks as the oracle ------------------------------------------------------------------------------
# Without random start and quantization both implementations run the same arithmetic except for the loss
# reduction (ours: sum; torchattacks: mean). With B a power of two the two gradients differ by an exact factor
# of B, so sign() agrees bit for bit (observed: 0.0 max difference for PGD-Linf, FGSM and MI-FGSM, also at
# B=12). A tie at a near-zero gradient could still flip one sign and move a pixel by one step, hence the
# tolerance: >= 99.9% of pixels within 1e-6 and every pixel within one step (two for MI-FGSM, whose momentum
# carries a flipped sign into the next step). PGD-L2 has no sign: the only differences are the 1e-10 / 1e-12
# guards in the divisions by norms, observed <= 2.4e-7 (2 float32 ulps at 1.0), so all pixels within 1e-6.

EPS = 1 / 255  # small enough that not every image is fooled, so the fooling-rate comparison means something
ALPHA = EPS / 4
STEPS = 10
EPS_L2 = 0.25


def oracle_pairs(model):
    return {
        "pgd_linf": (
            create_attack("pgd_linf", eps=EPS, step_size=ALPHA, steps=STEPS, random_start=False,
                   quantize=False),
            torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False),
            ALPHA,
        ),
        "pgd_l2": (
            create_attack("pgd_l2", eps=EPS_L2, step_size=EPS_L2 / 4, steps=STEPS, random_start=False,
                   quantize=False),
            torchattacks.PGDL2(model, eps=EPS_L2, alpha=EPS_L2 / 4, steps=STEPS, random_start=False),
            EPS_L2 / 4,
        ),
        "fgsm": (create_attack("fgsm", eps=EPS, quantize=False), torchattacks.FGSM(model, eps=EPS), EPS),
        "mifgsm": (
            create_attack("mifgsm", eps=EPS, step_size=ALPHA, steps=STEPS,
                   quantize=False),
            torchattacks.MIFGSM(model, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0),
            2 * ALPHA,
        ),
    }


@pytest.mark.parametrize("batch", [B, 12])
@pytest.mark.parametrize("name", ["pgd_linf", "pgd_l2", "fgsm", "mifgsm"])
def test_matches_torchattacks(model, data, name, batch):
    x, y = data[0][:batch], data[1][:batch]
    ours, theirs, step = oracle_pairs(model)[name]
    x_ours = ours(model, x, y)
    x_theirs = theirs(x, y)
    assert x_ours.shape == x_theirs.shape == x.shape
    assert not torch.equal(x_ours, x), "the attack must move the images"
    diff = (x_ours - x_theirs).abs()
    if name == "pgd_l2":
        assert diff.max().item() <= 1e-6, diff.max().item()
    else:
        assert (diff <= 1e-6).float().mean().item() >= 0.999, (diff > 1e-6).sum().item()
        assert diff.max().item() <= step + 1e-6, diff.max().item()
    fooled_ours = (predict(model, x_ours) != y).sum().item()
    fooled_theirs = (predict(model, x_theirs) != y).sum().item()
    assert abs(fooled_ours - fooled_theirs) <= 1, (fooled_ours, fooled_theirs)
    assert fooled_ours > 0


def test_fooling_rate_is_partial_at_small_budget(model, data):
    """Guards the meaning of the oracle comparison: at eps=1/255 FGSM fools some but not all images."""
    x, y = data
    ours, _, _ = oracle_pairs(model)["fgsm"]
    fooled = (predict(model, ours(model, x, y)) != y).sum().item()
    assert 0 < fooled < len(x)


# --- budgets, range, quantization -----------------------------------------------------------------------------


def _attack(name: str, quantize: bool, **kw) -> Attack:
    eps = kw.pop("eps", 2.0 if name == "pgd_l2" else 8 / 255)
    return create_attack(name, eps=eps, steps=kw.pop("steps", 5), quantize=quantize, **kw)


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("name", ["pgd_linf", "pgd_l2", "fgsm", "mifgsm"])
def test_budget_and_range(model, data, name, quantize):
    x, y = data
    attack = _attack(name, quantize)
    x_adv = attack(model, x, y, torch.arange(len(x)))
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    delta = x_adv - x
    if name in LINF_ATTACKS:
        assert delta.abs().max().item() <= attack.eps + 1e-6
        assert delta.abs().max().item() >= attack.eps - 1e-6, "a signed-gradient step should reach the budget"
    else:
        norms = delta.flatten(1).norm(dim=1)
        assert norms.max().item() <= attack.eps + 1e-5, norms.max().item()
        assert norms.max().item() > attack.eps / 2
    if quantize:
        # on 8-bit levels exactly: the same floats as uint8 / 255
        levels = torch.round(x_adv * 255)
        assert torch.equal(x_adv, levels / 255)
        if name in LINF_ATTACKS:  # eps = 8/255 and x on 8-bit levels: within the budget exactly, in levels
            assert (levels - torch.round(x * 255)).abs().max().item() <= 8


def test_linf_budget_off_the_grid_is_snapped_with_a_warning(model, data, caplog):
    """eps = 0.0627 (the README's '16/255') is 15.99 levels: the attack uses 16/255, says so, and records it."""
    with caplog.at_level(logging.WARNING, logger="satlab.attacks.gradient"):
        attack = create_attack("pgd_linf", eps=0.0627, steps=3)
    assert attack.eps == 16 / 255
    assert attack.describe()["eps"] == 16 / 255 and attack.describe()["alpha"] == pytest.approx(4 / 255)
    assert len(attack.notes) == 1 and "0.0627" in attack.notes[0] and "16/255" in attack.notes[0]
    assert attack.notes[0] in caplog.text
    assert "16/255" in attack.summary()
    # the budget used is the one recorded: the quantized image moves by 16 levels, not 15
    x, y = data
    x_adv = attack(model, x, y)
    assert (torch.round(x_adv * 255) - torch.round(x * 255)).abs().max().item() == 16
    # eps = 0.03 is 7.65 levels: nearest is 8
    assert create_attack("pgd_linf", eps=0.03).eps == 8 / 255
    # the same budget, however it was written, is one cache key
    assert attack.describe() == create_attack("pgd_linf", eps=16 / 255, steps=3).describe()


def test_linf_budget_within_a_thousandth_of_a_level_is_snapped_silently(caplog):
    with caplog.at_level(logging.WARNING):
        attack = create_attack("pgd_linf", eps=0.03137255)  # 8/255 to 7 digits
    assert attack.eps == 8 / 255 and attack.notes == () and not caplog.text


def test_unquantized_or_l2_budgets_are_not_snapped():
    assert create_attack("pgd_linf", eps=0.03, quantize=False).eps == 0.03
    assert create_attack("pgd_l2", eps=0.7, quantize=True).eps == 0.7
    attack = create_attack("fgsm", eps=0.0627)
    assert attack.eps == attack.alpha == 16 / 255 and len(attack.notes) == 1  # FGSM steps the budget used


def test_linf_budget_below_half_a_level_is_refused():
    with pytest.raises(SatlabError, match=r"attack\.eps=0\.001 is less than half an 8-bit level"):
        create_attack("pgd_linf", eps=0.001)
    assert create_attack("pgd_linf", eps=0.001, quantize=False).eps == 0.001


@pytest.mark.parametrize("name", list_attacks())
def test_zero_budget_is_refused(name):
    """A zero budget would floor every pair (no image can move): every attack refuses it, under either norm."""
    rule = r"in \(0, 1\] \(L-inf" if name != "pgd_l2" else r"> 0 \(the L2 norm"
    for eps in (0, 0.0, -0.0):
        with pytest.raises(SatlabError, match=rf"^attack\.eps=(0|0\.0|-0\.0) must be a number {rule}"):
            create_attack(name, eps=eps)
    with pytest.raises(SatlabError, match=r"^attack\.eps=0 must be a number > 0"):
        create_attack("pgd_linf", eps=0, norm="l2")


# --- L2 at ImageNet size -----------------------------------------------------------------------------------------
# An L2 budget spreads over 3 x 224 x 224 values: eps = 1 is 0.66 levels RMS per value. The old rounding (nearest
# level, L2 rescale, towards x) kept 0.07-0.35 x eps there and nothing at eps = 0.5.


@pytest.fixture(scope="module")
def model_224() -> PixelModel:
    return random_convnext(1000, 224)


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return attack_loss(model(x), y, "ce").item()


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_l2_keeps_its_budget_and_loss_at_224px(model_224, eps):
    """The default L2 attack keeps >= 0.8 x eps and >= 0.8 x the unrounded loss increase; so does the 8-bit
    option from eps = 1 on (measured 0.90 / 0.98 of the loss increase at eps 1 / 2, 0.71 at 0.5)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 224, 224), generator=gen).float() / 255
    y = predict(model_224, x)
    seeds = torch.arange(2)
    default = instantiate(OmegaConf.load(CONF / "pgd_l2.yaml"), eps=eps, steps=5)
    unrounded = create_attack("pgd_l2", eps=eps, steps=5, quantize=False)
    rounded = create_attack("pgd_l2", eps=eps, steps=5, quantize=True)
    base = _loss(model_224, x, y)
    x_float = unrounded(model_224, x, y, seeds)
    gain = _loss(model_224, x_float, y) - base
    assert gain > 0
    for attack, keep in ((default, 0.8), (rounded, 0.8 if eps >= 1 else 0.6)):
        x_adv = attack(model_224, x, y, seeds)
        norms = (x_adv - x).flatten(1).norm(dim=1)
        assert norms.max().item() <= eps + 1e-4, norms
        assert norms.min().item() >= 0.8 * eps, (attack.quantize, norms / eps)
        kept = (_loss(model_224, x_adv, y) - base) / gain
        assert kept >= keep, (attack.quantize, kept)
    x_q = rounded(model_224, x, y, seeds)
    assert torch.equal(x_q, torch.round(x_q * 255) / 255)


def test_l2_rounding_is_budget_exact_and_aligned():
    """round_l2 never leaves the ball, uses most of it, and points where the float perturbation points."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (3, 3, 16, 16), generator=gen).float() / 255
    delta = torch.randn(x.shape, generator=gen)
    for eps in (0.05, 0.3, 2.0):
        d = delta * (eps / delta.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
        x_adv = (x + d).clamp(0, 1)
        q = round_l2(x_adv, x, eps) - x
        norms = q.flatten(1).norm(dim=1)
        assert norms.max().item() <= eps + 1e-6
        assert norms.min().item() >= 0.9 * eps - 1 / 255, (eps, norms)
        cos = torch.nn.functional.cosine_similarity(q.flatten(1), (x_adv - x).flatten(1))
        assert cos.min().item() > 0.5, cos
        assert (q * (x_adv - x) >= -1e-7).all(), "a value never moves against the float perturbation"


def test_l2_budget_larger_than_the_pixel_cube_is_refused():
    attack = create_attack("pgd_l2", eps=60.0)
    attack.check_resolution(224)  # 388 is the diameter at 224 px
    with pytest.raises(SatlabError, match=r"attack\.eps=60 is larger than the L2 distance between any two 32x32"):
        attack.check_resolution(32)
    create_attack("pgd_linf", eps=1.0).check_resolution(8)  # L-inf: bounded by 1 at construction


# --- per-sample random start ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pgd_linf", "pgd_l2"])
def test_random_start_is_per_sample(model, data, name):
    """A sample's adversarial example depends on its seed, not on the batch around it.

    Unquantized: batched conv numerics may differ from B=1 by float rounding (observed <= 1.8e-7 for L2, 0 for
    Linf), so 1e-5. Quantized: observed identical; allow one level on at most 0.1% of pixels, since a 1e-7
    difference can in principle sit on a rounding boundary.
    """
    x, y = data
    seeds = torch.arange(100, 100 + len(x))
    for quantize in (False, True):
        attack = _attack(name, quantize)
        assert attack.random_start
        batch = attack(model, x, y, seeds)
        for i in (0, 5, len(x) - 1):
            alone = attack(model, x[i : i + 1], y[i : i + 1], seeds[i : i + 1])[0]
            diff = (alone - batch[i]).abs()
            if quantize:
                assert diff.max().item() <= 1 / 255 + 1e-6
                assert (diff > 0).float().mean().item() <= 0.001
            else:
                assert diff.max().item() <= 1e-5, diff.max().item()
        # the same seeds reproduce the batch; other seeds start elsewhere
        assert torch.equal(attack(model, x, y, seeds), batch)
        other = attack(model, x, y, seeds + 1000)
        assert (other - batch).abs().flatten(1).amax(1).min().item() > 0


def test_random_start_noise_depends_only_on_seed():
    attack = create_attack("pgd_linf", eps=8 / 255)
    x = torch.full((3, 3, 8, 8), 0.5)
    a = attack._random_start(x, torch.tensor([7, 8, 9]))
    b = attack._random_start(x[:1], torch.tensor([7]))
    assert torch.equal(a[:1], b)
    assert not torch.equal(a[0], a[1])
    assert (a - x).abs().max().item() <= 8 / 255 + 1e-7


# --- white-box success -----------------------------------------------------------------------------------------


def test_pgd_white_box_success_at_32(model, data):
    """The config default (eps=32/255, 10 steps, random start, quantized) fools >= 90% (observed 100%)."""
    x, y = data
    attack = instantiate(OmegaConf.load(CONF / "pgd_linf.yaml"))
    assert attack.eps == pytest.approx(32 / 255)
    correct = predict(model, x) == y
    assert correct.all()
    fooled = predict(model, attack(model, x, y, torch.arange(len(x)))) != y
    assert fooled[correct].float().mean().item() >= 0.9


def test_attack_beats_random_noise_of_the_same_budget(model, data):
    """A random network is fragile, so fooling it proves little: the attack must do what noise cannot.

    At 4/255 (observed): PGD fools 100% and raises the summed loss by 5.8; random +-eps noise fools 6% and raises
    it by 0.01. An attack that ignored or inverted its gradient would fail both bounds.
    """
    x, y = data
    eps = 4 / 255
    gen = torch.Generator().manual_seed(5)
    noise = ((torch.randint(0, 2, x.shape, generator=gen) * 2 - 1) * eps + x).clamp(0, 1)
    base = _loss(model, x, y)
    for name in ("pgd_linf", "mifgsm", "fgsm"):
        x_adv = create_attack(name, eps=eps)(model, x, y, torch.arange(len(x)))
        assert (predict(model, x_adv) != y).float().mean().item() >= 0.9, name
        assert (predict(model, noise) != y).float().mean().item() <= 0.25
        assert _loss(model, x_adv, y) - base >= 50 * max(_loss(model, noise, y) - base, 1e-3), name
        # descending the gradient must not fool: the sign of the step matters
        x_desc = (2 * x - x_adv).clamp(0, 1)
        assert (predict(model, x_desc) != y).float().mean().item() <= 0.25, name


# --- bad parameters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("pgd_linf", {"eps": -1}, r"^attack\.eps=-1 must be a number in \(0, 1\] \(L-inf, in pixel units: 8/255 = 0\.0314\)$"),
        ("pgd_linf", {"eps": float("nan")}, r"attack\.eps=nan must be a number in \(0, 1\]"),
        ("pgd_linf", {"eps": float("inf")}, r"attack\.eps=inf must be a number in \(0, 1\]"),
        ("pgd_linf", {"eps": 1e9}, r"attack\.eps=1000000000\.0 must be a number in \(0, 1\]"),
        ("fgsm", {"eps": "inf"}, r"attack\.eps=inf must be a number in \(0, 1\]"),
        ("pgd_linf", {"eps": True}, r"attack\.eps=true must be a number in \(0, 1\]"),
        ("pgd_l2", {"eps": float("inf")}, r"attack\.eps=inf must be a number > 0 \(the L2 norm over all 3xHxW"),
        ("pgd_l2", {"eps": -0.5}, r"attack\.eps=-0\.5 must be a number > 0"),
        ("pgd_linf", {"steps": 0}, r"^attack\.steps=0 must be an integer >= 1$"),
        ("pgd_linf", {"steps": -3}, r"attack\.steps=-3 must be an integer >= 1"),
        ("pgd_linf", {"steps": True}, r"attack\.steps=true must be an integer >= 1"),
        ("pgd_linf", {"steps": 2.5}, r"attack\.steps=2\.5 must be an integer >= 1"),
        ("pgd_linf", {"steps": "ten"}, r"attack\.steps=ten must be an integer >= 1"),
        ("pgd_linf", {"random_start": "no"}, r"^attack\.random_start=no must be true or false$"),
        ("pgd_linf", {"quantize": "off"}, r"^attack\.quantize=off must be true or false$"),
        ("pgd_l2", {"quantize": 1}, r"^attack\.quantize=1 must be true or false$"),
        ("pgd_linf", {"norm": "l3"}, r"^attack\.norm=l3 is unknown; choose one of linf, l2"),
        ("pgd_linf", {"loss": "hinge"}, r"^attack\.loss=hinge is unknown; choose one of ce, margin$"),
        ("pgd_linf", {"loss": "marign"}, r"attack\.loss=marign is unknown; .*; did you mean margin\?$"),
        ("pgd_linf", {"step_size": 0}, r"^attack\.step_size=0 must be null \(eps/4\) or a number > 0$"),
        ("pgd_linf", {"step_size": float("inf")}, r"attack\.step_size=inf must be null \(eps/4\) or a number > 0"),
        ("mifgsm", {"momentum": -0.5}, r"^attack\.momentum=-0\.5 must be a number >= 0$"),
        ("pgd_linf", {"eps": "abc"}, r"attack\.eps=abc must be a number in \(0, 1\]"),
        ("fgsm", {"eps": "8/255"}, r"attack\.eps=8/255 must be a number in \(0, 1\]"),
    ],
)
def test_bad_params_raise(name, kwargs, match):
    with pytest.raises(SatlabError, match=match):
        create_attack(name, **kwargs)


def test_unknown_attack_suggests_close_name():
    with pytest.raises(SatlabError, match=r"unknown attack 'pgd_lin'.*did you mean pgd_linf") as err:
        create_attack("pgd_lin")
    assert all(name in str(err.value) for name in list_attacks())
    with pytest.raises(SatlabError, match=r"unknown attack 'cw'; choose one of fgsm, mifgsm, pgd_l2, pgd_linf$"):
        create_attack("cw")


def test_numeric_strings_are_accepted():
    attack = create_attack("pgd_linf", eps="0.0313725", steps="7", step_size=None)
    assert attack.eps == 8 / 255 and attack.steps == 7 and attack.alpha == 2 / 255  # on the grid, silently
    same = create_attack("pgd_l2", eps=0.5, steps=3).describe()
    assert create_attack("pgd_l2", eps="0.5", steps=3.0).describe() == same


# --- configs ------------------------------------------------------------------------------------------------------

EXPECTED = {  # quantize: L-inf on 8-bit levels, L2 unrounded (see conf/attack/pgd_l2.yaml)
    "pgd_linf": dict(norm="linf", steps=10, random_start=True, momentum=0.0, eps=32 / 255, alpha=8 / 255, quantize=True),
    "pgd_l2": dict(norm="l2", steps=10, random_start=True, momentum=0.0, eps=2.0, alpha=0.5, quantize=False),
    "fgsm": dict(norm="linf", steps=1, random_start=False, momentum=0.0, eps=32 / 255, alpha=32 / 255, quantize=True),
    "mifgsm": dict(norm="linf", steps=10, random_start=False, momentum=1.0, eps=32 / 255, alpha=8 / 255, quantize=True),
}


def test_every_attack_config_instantiates():
    paths = sorted(CONF.glob("*.yaml"))
    assert {p.stem for p in paths} >= set(EXPECTED)
    for path in paths:
        attack = instantiate(OmegaConf.load(path))
        assert isinstance(attack, Attack), path
        assert attack.name == path.stem and attack.name in list_attacks()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attack_config_values(name):
    attack = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    want = EXPECTED[name]
    assert attack.name == name
    assert attack.norm == want["norm"] and attack.steps == want["steps"]
    assert attack.random_start is want["random_start"] and attack.momentum == want["momentum"]
    assert attack.eps == pytest.approx(want["eps"]) and attack.alpha == pytest.approx(want["alpha"])
    assert attack.quantize is want["quantize"] and attack.loss == "ce"
    assert attack.describe()["alpha"] == pytest.approx(want["alpha"])
    assert attack.notes == (), "a shipped config asks for exactly the budget it gets"
    assert create_attack(name).quantize is want["quantize"], "the library default is the config's"


def test_fgsm_is_one_step_of_size_eps(model, data):
    x, y = data
    attack = create_attack("fgsm", eps=4 / 255, quantize=False)
    assert attack.steps == 1 and attack.alpha == attack.eps
    x_adv = attack(model, x, y)
    moved = (x_adv - x).abs()
    interior = (x > 4 / 255) & (x < 1 - 4 / 255)  # pixels the [0,1] clamp cannot cut
    assert torch.allclose(moved[interior], torch.full_like(moved[interior], 4 / 255), atol=1e-6)
