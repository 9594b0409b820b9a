"""How much of an L2 attack survives 8-bit rounding at ImageNet size (the table in docs/attacks.md).

For random-init timm test models at 224 px and noise images, PGD-L2 (10 steps of eps/4, random start) is run
unrounded, then rounded two ways: the scheme satlab used before (nearest level, L2 rescale, towards x) and the
budget-preserving rounding of `satlab.attacks.rounding.round_l2` (what `quantize=true` does now). Printed per
model and budget: norm kept (mean ||x_q - x|| / eps) and loss kept (increase of the summed CE loss over the clean
images, relative to the unrounded attack's).

    python experiments/attacks/l2_rounding.py [--images 4]
"""

from __future__ import annotations

import argparse

import timm
import torch

from satlab.attacks import attack_loss, create_attack
from satlab.attacks.rounding import round_l2, toward_levels
from satlab.models.wrapper import PixelModel


def loss(net, x, y) -> float:
    with torch.no_grad():
        return attack_loss(net(x), y, "ce").item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | eps | old rounding: norm kept | old: loss kept | budget-preserving: norm kept | loss kept |")
    print("|---|---|---|---|---|---|")
    for name in ("test_convnext", "test_resnet", "test_vit"):
        torch.manual_seed(0)
        net = PixelModel.from_timm(timm.create_model(name, num_classes=1000), {"input_size": (3, 224, 224)}).eval()
        gen = torch.Generator().manual_seed(1)
        x = torch.randint(0, 256, (args.images, 3, 224, 224), generator=gen).float() / 255
        with torch.no_grad():
            y = net(x).argmax(1)
        base = loss(net, x, y)
        for eps in (0.5, 1.0, 2.0, 3.0):
            attack = create_attack("pgd_l2", eps=eps, steps=10, quantize=False)
            x_float = attack(net, x, y, torch.arange(len(x)))
            gain = loss(net, x_float, y) - base
            old = toward_levels(attack._projection(x)(torch.round(x_float * 255) / 255), x)
            new = round_l2(x_float, x, eps)
            kept = [((q - x).flatten(1).norm(dim=1).mean().item() / eps, (loss(net, q, y) - base) / gain)
                    for q in (old, new)]
            print(f"| {name} | {eps} | {kept[0][0]:.2f} | {kept[0][1]:.2f} | {kept[1][0]:.2f} | {kept[1][1]:.2f} |")


if __name__ == "__main__":
    main()
