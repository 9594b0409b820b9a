"""Maps at a stated precision (`sat.precision`), the evidence in one run (`make bench-precision`, section (g) of
`make bench`): printed as markdown, each measured number beside its fixed-count baseline.

(a) the stopping rule simulated on the paper's released 69 x 69 matrix (`precision_sim.py`): coverage of the final
    intervals, evaluations and attacks against the fixed 5,000-image map, for h = 0.10, 0.15, 0.20;
(b) a real map: the digits zoo (`model_set=digits_zoo_narrow`, 9 models, 36 pairs) trained on Fashion-MNIST (300
    training images per class) and mapped on its test images (`--per-class`, default 500: 5,000 images) under the
    default attack (PGD-Linf 32/255, 10 steps), once with every image and once with `sat.precision=h`, each from an
    empty records cache: forward passes counted by the engine (`summary.json: engine_work`), the pairs that reached
    h, and how far each adaptive pair's value lies from the full-data value, in units of its interval's half-width;
    also the measured correlation of a pair's two directions, which (a) shows the savings depend on;
(c) the costed plan for every timm ImageNet-1k classifier at h = 0.15 beside the fixed-count plan (5,000 images,
    PGD-10): the FLOPs of (e) in scale_bench.py with the shares of attacks and evaluations from (a), at the
    correlation (b) measured; and the simulated rank mode's plan (not built: see precision_sim.py).

    python experiments/benchmarks/precision_bench.py                      # everything (about 40 min on 2 cores)
    python experiments/benchmarks/precision_bench.py --skip b --sample 50  # no real map, a smaller FLOP sample
    python experiments/benchmarks/precision_bench.py --skip b --rho 0.3    # (c) at the correlation (b) measured
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from precision_sim import RELEASED, section_simulation  # noqa: E402

from satlab.sat.precision import half_width, pair_counts  # noqa: E402
from satlab.sat.records import load_records, read_matrix  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------- (b) a real map


def satlab_map(out: Path, cache: Path, per_class: int, *extra: str) -> dict:
    """One `satlab` map of the digits zoo on Fashion-MNIST into `out` (records in memory: sat.resume=false, so
    the engine's counts are the whole map's); its summary.json."""
    args = ["dataset=torchvision", "dataset.name=FashionMNIST", f"dataset.root={FASHION}",
            "dataset.train_per_class=300", f"dataset.samples_per_class={per_class}", "model_set=digits_zoo_narrow",
            "sat.resume=false", "sat.n_bootstrap=0", "sat.print_table=false", "logger=none",
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={cache}", f"paths.output_dir={out}", *extra]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "satlab.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline"})
    if done.returncode:
        sys.exit(f"precision_bench: satlab failed ({' '.join(extra) or 'fixed map'}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = time.perf_counter() - start
    return summary


def direction_correlation(records) -> float:
    """Mean over pairs of the correlation between a pair's two directions (fooled A->B, B->A) on its X_AB."""
    values = []
    n = len(records.models)
    for a in range(n):
        for b in range(a + 1, n):
            both = records.correct[a] & records.correct[b]
            x, y = records.fooled[a, b][both].astype(float), records.fooled[b, a][both].astype(float)
            if x.std() > 0 and y.std() > 0:
                values.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(values)) if values else math.nan


def section_real_map(h: float, per_class: int, cache: Path, out: Path) -> float | None:
    """(b); returns the measured correlation of the directions (None when skipped)."""
    print(f"## (b) a real map at h = {h}: the digits zoo on Fashion-MNIST, fixed against adaptive\n")
    if not (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"Skipped: no Fashion-MNIST under {FASHION} (apt-get install -y dataset-fashion-mnist).\n")
        return None
    fixed = satlab_map(out / "fixed", cache, per_class)  # trains the zoo into `cache` the first time
    adaptive = satlab_map(out / "adaptive", cache, per_class, f"sat.precision={h}")
    names, full = read_matrix(out / "fixed" / "sat_matrix.csv")
    pairs = pd.read_csv(out / "adaptive" / "sat_ci.csv")
    index = {n: i for i, n in enumerate(names)}
    truth = np.array([full[index[a], index[b]] for a, b in zip(pairs["model_a"], pairs["model_b"])])
    z = (truth - pairs["sat"].to_numpy()) / pairs["half_width"].to_numpy()
    outside = (truth < pairs["stop_low"]) | (truth > pairs["stop_high"])
    records = load_records(out / "fixed" / "records.npz")
    rho = direction_correlation(records)
    images = len(records.sample_ids)
    work = {"fixed": fixed["engine_work"], "adaptive": adaptive["engine_work"]}
    print(f"{len(names)} models, {len(pairs)} pairs, {images} test images; SAT of the fixed map "
          f"{np.nanmin(truth):.2f}-{np.nanmax(truth):.2f} (transfer {math.exp(np.nanmin(truth)):.1f}-"
          f"{math.exp(np.nanmax(truth)):.1f} %); mean correlation of a pair's two directions on X_AB: {rho:.2f}.\n")
    print("| forward passes (images x models) | fixed (every image) | adaptive (h = %g) | adaptive / fixed |" % h)
    print("|---|---|---|---|")
    for kind, label in (("evaluated", "evaluations (phase 2)"), ("attacked", "images attacked (phase 1)"),
                        ("clean", "clean passes")):
        f, a = work["fixed"][kind], work["adaptive"][kind]
        print(f"| {label} | {f:,} | {a:,} | {a / f:.1%} |")
    print(f"| wall time of the run (training excluded after the first; this machine, not a target) | "
          f"{fixed['wall_s']:.0f} s | {adaptive['wall_s']:.0f} s | {adaptive['wall_s'] / fixed['wall_s']:.1%} |\n")
    reached = int(pairs["reached_h"].sum())
    used = pairs["images_used"]
    short = pairs.loc[~pairs["reached_h"], ["model_a", "model_b"]].to_numpy()
    print(f"- pairs that reached h: {reached} of {len(pairs)}; the others used all {images} images "
          f"({', '.join(f'{a}/{b}' for a, b in short) or 'none'})")
    print(f"- images used per pair: median {used.median():.0f}, min {used.min()}, max {used.max()} (rounds of "
          f"{sorted(set(used))})")
    print(f"- full-data value outside the adaptive pair's interval: {int(outside.sum())} of {len(pairs)} pairs "
          f"({outside.mean():.1%}; about 5 % expected of a 95 % interval, fewer since the full data include the "
          "pair's own images)")
    print(f"- distance of the full-data value from the adaptive value, in half-widths: median |z| "
          f"{np.nanmedian(np.abs(z)):.2f}, max |z| {np.nanmax(np.abs(z)):.2f}")
    widths = []  # the fixed map's own half-widths, for scale
    for a, b in zip(pairs["model_a"], pairs["model_b"]):
        i, j = index[a], index[b]
        both = records.correct[i] & records.correct[j]
        widths.append(half_width(*pair_counts(both, records.fooled[i, j], records.fooled[j, i])))
    print(f"- median half-width: fixed map {np.median(widths):.3f}, adaptive {pairs['half_width'].median():.3f} "
          f"(h = {h})\n")
    return rho


# --------------------------------------------------------------------------------------------- (c) the plan


def section_plan(table: dict, rho: float | None, h: float, sample: int) -> None:
    """(c): every timm ImageNet-1k classifier, fixed against adaptive at `h`, from FLOPs and the shares of (a)."""
    import random
    import statistics

    import timm
    from scale_bench import H100_BF16_DENSE, flops

    print(f"## (c) the plan for every timm ImageNet-1k classifier at h = {h}\n")
    weights = [n for n in timm.list_pretrained() if "in1k" in n.partition(".")[2]]
    chosen = random.Random(0).sample(weights, min(sample, len(weights)))
    sizes = []
    for n in chosen:
        side = int((getattr(timm.models.get_pretrained_cfg(n), "input_size", None) or (3, 224, 224))[-1])
        try:
            sizes.append(flops(n.partition(".")[0], side))
        except Exception:  # noqa: BLE001 - an architecture the meta device cannot run: left out, counted
            pass
    mean, every, images, steps, accuracy = statistics.fmean(sizes), len(weights), 5000, 10, 0.8
    clean = images * every * mean
    attack = images * every * mean * accuracy * (3 * steps + 1)  # steps x fwd+bwd, then its own evaluation
    evaluate = images * accuracy**2 * every * (every - 1) * mean
    rate = H100_BF16_DENSE / 3
    rhos = sorted({r for r, _ in table})
    near = min(rhos, key=lambda r: abs(r - rho)) if rho is not None and not math.isnan(rho) else None
    print(f"{every} weights; mean forward pass {mean / 1e9:.1f} GFLOP (a sample of {len(sizes)} of {len(chosen)} "
          f"drawn, at each one's input size); 5,000 images, PGD-10, 80 % clean accuracy; H100 at a third of its "
          f"dense bf16 peak (assumed, as in (e) of scale_bench.py).\n")
    print("| plan | clean passes | attacks | evaluations | total FLOPs | H100-hours |")
    print("|---|---|---|---|---|---|")
    print(f"| fixed 5,000 images | {clean:.2e} | {attack:.2e} | {evaluate:.2e} | {clean + attack + evaluate:.2e} | "
          f"{(clean + attack + evaluate) / rate / 3600:,.0f} |")
    for mode, r in [(h, r) for r in rhos] + [("rank", r) for r in rhos]:
        share = table[r, mode]
        total = clean * (1 + accuracy * share["attacks"]) + attack * share["attacks"] + evaluate * share["evaluations"]
        mark = " (nearest to the correlation measured in (b))" if r == near else ""
        label = f"h = {h}" if mode != "rank" else "rank mode (not built)"
        print(f"| {label}, directions' correlation {r}{mark} | {clean * (1 + accuracy * share['attacks']):.2e} | "
              f"{attack * share['attacks']:.2e} | {evaluate * share['evaluations']:.2e} | {total:.2e} | "
              f"{total / rate / 3600:,.0f} |")
    print("\nThe adaptive plan's clean passes include (an upper bound) a second forward pass of each image attacked "
          "after the first round (the engine checks the stored correctness on it). The shares are the simulation's "
          "(a), whose pairs transfer like the paper's 69 models; a map of every classifier has more distant pairs "
          "(lower rates need more images), so its share may be higher.\n")


def sections(skip: set[str], h: float = 0.15, per_class: int = 500, cache: Path = Path("/tmp/satlab-precision-bench"),
             sample: int = 300, reps: int = 10, rho: float | None = None) -> None:
    """(a), (b) and (c), but those in `skip`; (a) always runs: (c) takes its shares."""
    if not RELEASED.is_file():
        print(f"Skipped: no released matrix at {RELEASED} (../shared/reference/sat-official/).\n")
        return
    print("## (a) the stopping rule, simulated on the released matrix\n")
    table = section_simulation(RELEASED, 5000, 0.64, [0.0, 0.25, 0.5], sorted({0.10, 0.15, 0.20, h}), reps, 0)
    if "b" not in skip:
        rho = section_real_map(h, per_class, cache, cache / "maps")
    if "c" not in skip:
        section_plan(table, rho, h, sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="sections to skip, e.g. b,c")
    parser.add_argument("--h", type=float, default=0.15, help="the stated precision of (b) and (c)")
    parser.add_argument("--per-class", type=int, default=500, help="Fashion-MNIST test images per class in (b)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/satlab-precision-bench"),
                        help="(b)'s cache: the zoo's weights, trained there the first time (about 25 min here)")
    parser.add_argument("--sample", type=int, default=300, help="timm IN-1k weights sampled for (c)'s FLOPs")
    parser.add_argument("--reps", type=int, default=10, help="simulated maps per row of (a)")
    parser.add_argument("--rho", type=float,
                        help="the directions' correlation (b) measured, for (c) when (b) is skipped")
    args = parser.parse_args()
    print(f"# satlab: maps at a stated precision ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU core(s))\n")
    sections(set(args.skip.split(",")), args.h, args.per_class, args.cache, args.sample, args.reps, args.rho)


if __name__ == "__main__":
    main()
