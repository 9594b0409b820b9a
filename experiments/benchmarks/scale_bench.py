"""Benchmark of maps at scale, in one run (`make bench`): prints a markdown report, measured numbers side by side
with their baselines.

(a) peak RSS against N = 4, 8, 16, 32 distinct timm CNNs (random init with one class, so every image is in every
    X_AB: the real work of a map; digits at 32 px, 2 per class): the engine
    with `sat.memory_budget=4` beside the same engine with all N models resident (the old engine's way), each run
    in a fresh process (peak RSS of that process);
(b) time against N (the budget-4 runs), with the cost per attack and per evaluation fitted by least squares
    (t = c + a N + e N(N-1));
(c) the engine against the best plain loop an expert writes (every model in memory, one attack per source on
    the images it gets right, then N^2 evaluations on X_AB, no caching) on the default zoo, paired rounds
    (in `engine_vs_loop.py`);
(d) a dry run of the 68 paper69 architectures at 224 px: random weights with one class (so every image is in
    every X_AB: the real work of a map), 1 PGD step, peak RSS and time per model;
(e) the cost of the paper's map and of a map of every timm ImageNet-1k classifier, from FLOPs per model (torch's
    flop counter on the meta device) and throughput, and the time to decode its images at the decode rate measured
    in (f) (or on a few generated JPEGs when (f) is skipped): a wall-time estimate saying which bound dominates;
(f) the data path: today's (a decode per pass) against decoding once per map, on 1,000 generated ImageNet-sized
    JPEGs (in `datapath_bench.py`, also `make bench-data`);
(g) maps at a stated precision: the stopping rule simulated on the released matrix, a real map (Fashion-MNIST) fixed
    against adaptive, and the costed plan for every timm ImageNet-1k classifier (in `precision_bench.py`, also
    `make bench-precision`).

    python experiments/benchmarks/scale_bench.py             # everything (about 70 min on 2 CPU cores)
    python experiments/benchmarks/scale_bench.py --skip a,d  # some sections only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore")
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}

# 32 distinct timm CNN architectures of 4.8-23.5 M parameters (about 400 M together), in the order largest,
# smallest, second largest, second smallest, ...: every prefix (N = 4, 8, 16) mixes sizes like the whole list
# and the largest model is among the first four, so memory that grows with N is the engine's, not a bigger model's.
SIZED = ["convnext_femto", "resnet10t", "regnety_008", "rexnet_130", "gernet_s", "efficientnet_b1", "regnetx_008",
         "densenet121", "efficientnet_b2", "repvgg_a0", "resnet14t", "regnetx_016", "convnext_pico", "regnety_016",
         "hrnet_w18_small", "resnet18", "resnet18d", "seresnet18", "skresnet18", "dpn68", "densenet169", "resnet26",
         "resnet26d", "convnext_nano", "dla34", "cspresnet50", "resnet34", "resnet34d", "seresnet34",
         "resnext50_32x4d", "res2net50_14w_8s", "resnet50"]  # by size
CNNS = [SIZED[i // 2] if i % 2 else SIZED[-1 - i // 2] for i in range(len(SIZED))]
H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's data sheet (SXM, dense)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: list[str]) -> dict:
    """Run this script with `args` in a fresh process; its JSON answer (last line)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- (a) and (b)


def cnn_run(n: int, budget: int) -> dict:
    """One map of the first n CNNs on 20 digits (in this process): seconds, peak RSS, attacks, evaluations."""
    from satlab.attacks import create_attack
    from satlab.data.digits import digits
    from satlab.models import ModelSet, TimmSource
    from satlab.models.specs import ModelSpec
    from satlab.sat.engine import compute_records
    from satlab.sat.schedule import Budget

    data = digits(samples_per_class=2).eval
    # one class: every image is classified correctly, so every attack and every evaluation of a real map runs
    models = ModelSet([TimmSource(ModelSpec(a, a, pretrained=False, input_size="dataset"), 1, 32) for a in CNNS[:n]])
    data.labels[:] = 0
    attack = create_attack("pgd_linf", eps=8 / 255, steps=2)
    start = time.perf_counter()
    # batch 16: the evaluations' batches (4 x 16) are full from N = 4 on, so their activations are the same at every N
    result = compute_records(models, data, attack, batch_size=16, trainer_cfg=QUIET, memory_budget=Budget(models=budget))
    seconds = time.perf_counter() - start
    joint = result.records.correct.astype(int) @ result.records.correct.T.astype(int)
    return {"n": n, "budget": budget, "seconds": seconds, "rss_mib": peak_rss_mib(), "blocks": result.blocks,
            "attacked_images": int(result.records.correct.sum()), "evaluated_images": int(joint.sum() - np.trace(joint)),
            "params_m": sum(models.nbytes(i) for i in range(n)) / 4e6}


def section_memory_and_time(sizes: list[int]) -> None:
    print("## (a) peak memory and (b) time against the number of models\n")
    print("Each run in a fresh process: N distinct timm CNNs (random init, one class: every image is in every X_AB) "
          "on 20 digits at 32 px, PGD-Linf 2 steps, sat.batch_size=16; peak RSS of the process (`ru_maxrss`).\n")
    rows = []
    for n in sizes:
        streamed, resident = child(["--cnn", str(n), "--budget", "4"]), child(["--cnn", str(n), "--budget", str(n)])
        rows.append((streamed, resident))
    print("| N | parameters | peak RSS, memory_budget=4 | peak RSS, all N resident (old engine's way) | time, budget 4 "
          "| time, all resident |")
    print("|---|---|---|---|---|---|")
    for s, r in rows:
        print(f"| {s['n']} | {s['params_m']:.0f} M | {s['rss_mib']:.0f} MiB | {r['rss_mib']:.0f} MiB | "
              f"{s['seconds']:.1f} s | {r['seconds']:.1f} s |")
    first, last = rows[0][0], rows[-1][0]
    ratio = last["rss_mib"] / first["rss_mib"]
    print(f"\nPeak RSS at N={last['n']} / N={first['n']}, memory_budget=4: **{ratio:.2f}x** (target <= 1.3x: "
          f"{'met' if ratio <= 1.3 else 'NOT met'}); all resident: "
          f"{rows[-1][1]['rss_mib'] / rows[0][1]['rss_mib']:.2f}x.\n")
    # (b) t = c + a * N + e * N(N-1): a is per model (its clean pass and attack), e per ordered pair
    design = np.array([[1.0, s["n"], s["n"] * (s["n"] - 1)] for s, _ in rows])
    times = np.array([s["seconds"] for s, _ in rows])
    (c, a, e), *_ = np.linalg.lstsq(design, times, rcond=None)
    fitted = design @ np.array([c, a, e])
    print(f"(b) least-squares fit of the budget-4 times: t = {c:.2f} s + {a:.3f} s x N + {e * 1e3:.2f} ms x N(N-1) "
          f"(largest misfit {np.abs(fitted - times).max():.2f} s). Per model (clean pass, attack of its correct "
          f"images, loading, twice: phase 1 and its block) {a:.3f} s; per ordered pair (its evaluation on X_AB) "
          f"{e * 1e3:.2f} ms. These models differ widely in size, so the fit is a summary, not a law.\n")


# -------------------------------------------------------------------------------------------------- (d)


def paper69_specs() -> list:
    """The 68 models `experiment=paper69_imagenet` runs (model_set.models = models_timm1), with random weights.
    Read with PyYAML, not composed with hydra: the GPU benchmark imports this where hydra is not installed."""
    from dataclasses import replace

    import yaml

    from satlab.models import model_specs

    model_set = yaml.safe_load((ROOT / "conf" / "model_set" / "paper69.yaml").read_text())
    model_set["models"] = model_set["models_timm1"]
    return [replace(s, pretrained=False, checkpoint_path=None) for s in model_specs(model_set)]


def paper69_names() -> list[str]:
    return [s.timm_name for s in paper69_specs()]


def dry_run(images: int) -> dict:
    """All paper69 architectures at 224 px (in this process): random weights, one class, 1 PGD step."""
    from satlab.attacks import create_attack
    from satlab.data.common import TensorImages
    from satlab.models import ModelSet, TimmSource
    from satlab.sat.engine import compute_records

    specs = paper69_specs()  # each model at its own input size, as in a real run (224 px images resized)
    names = [s.timm_name for s in specs]
    models = ModelSet([TimmSource(s, 1, 224) for s in specs])
    gen = torch.Generator().manual_seed(0)
    data = TensorImages(torch.randint(0, 256, (images, 3, 224, 224), dtype=torch.uint8, generator=gen),
                        [0] * images, range(images))
    start = time.perf_counter()
    keys = models.keys()  # each model built once to hash its weights
    key_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = compute_records(models, data, create_attack("pgd_linf", eps=8 / 255, steps=1), batch_size=16,
                             trainer_cfg=QUIET)
    return {"names": names, "seconds": time.perf_counter() - start, "key_seconds": key_seconds, "keys": len(keys),
            "rss_mib": peak_rss_mib(), "per": result.seconds, "blocks": result.blocks,
            "all_in_xab": bool(result.records.correct.all()), "nbytes": [models.nbytes(i) for i in range(len(names))]}


def flops(name: str, size: int | None = None, classes: int = 1000) -> float:
    """Forward FLOPs of one image at `size` (None: the model's own input size), from torch's flop counter on the
    meta device (no memory, no weights)."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=classes).eval()
        side = size or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        with FlopCounterMode(display=False) as counter:  # with autograd on: some models' hooks need it
            model(torch.zeros(1, 3, side, side))
    return float(counter.get_total_flops())


def section_dry_run(images: int, saved: str | None = None) -> dict:
    """(d), from a fresh process (or from the raw measurement a previous run kept, `--dry-result`)."""
    run = json.loads(Path(saved).read_text()) if saved else child(["--dry-run", str(images)])
    Path("/tmp/satlab-bench-dry-run.json").write_text(json.dumps(run))  # the raw measurement, kept
    images = run.get("images", images)
    names = [k.split(" ", 1)[1] for k in run["per"] if k.startswith("attack ")]  # the model set's names, in order
    print(f"## (d) dry run: the {len(names)} paper69 architectures at 224 px\n")
    print(f"Random weights with one class (every image is in every X_AB), {images} image(s) of 224 px (each model "
          f"resizes them to its own input size, as in a real run), PGD 1 step, memory_budget=auto, one process on "
          f"{os.cpu_count()} CPU core(s).\n")
    fwd = {n: flops(t) for n, t in zip(names, run["names"])}
    attack = {n: run["per"].get(f"attack {n}", float("nan")) for n in names}
    evaluate = {}
    for label, seconds in run["per"].items():
        if label.startswith("evaluate "):
            block = label.split(" ", 1)[1].split(",")
            share = sum(fwd[t] for t in block)
            evaluate.update({t: seconds * fwd[t] / share for t in block})  # a block's time split by FLOPs
    print(f"Whole map: {run['seconds']:.0f} s in {run['blocks']} block(s) of targets, plus {run['key_seconds']:.0f} s "
          f"to build and hash each model once for its key; peak RSS **{run['rss_mib'] / 1024:.2f} GiB** for "
          f"{sum(run['nbytes']) / 2**30:.2f} GiB of weights (largest model {max(run['nbytes']) / 2**30:.2f} GiB); "
          f"every image in X_AB: {run['all_in_xab']}.\n")
    print("| model | weights | forward GFLOP (own input size, 1000 classes) | phase 1 (load, clean, attack) | "
          "phase 2 share (as target) |")
    print("|---|---|---|---|---|")
    for n, b in zip(names, run["nbytes"]):
        print(f"| {n} | {b / 2**20:.0f} MiB | {fwd[n] / 1e9:.1f} | {attack[n]:.1f} s | {evaluate.get(n, 0):.1f} s |")
    print()
    return {"fwd": fwd, "names": names, "run": run}  # names: as in run["per"]


# -------------------------------------------------------------------------------------------------- (e)


def map_flops(fwd: list[float], images: int, steps: int, accuracy: float) -> float:
    """FLOPs of a map: per model a clean pass, an attack of its correct images (steps x fwd+bwd = 3 fwd) and its
    own evaluation; per ordered pair an evaluation on X_AB (about accuracy^2 of the images)."""
    n, total = len(fwd), sum(fwd)
    per_model = images * total * (1 + 3 * steps * accuracy + accuracy)
    pairs = images * accuracy**2 * (n - 1) * total
    return per_model + pairs


DECODE_CORES = 16  # host cores assumed beside the GPU for the decode-once estimate (the lent H100/H200 machines')


def section_cost(dry: dict | None, sample: int, seed: int, decode_rate: float | None = None) -> None:
    """(e): FLOPs and compute time of two maps at an assumed H100 rate, beside the time to decode their images
    today (a decode per model and one for the fingerprint, on the main process) and once on DECODE_CORES cores,
    at `decode_rate` (images/s on one core; measured here when None)."""
    import timm
    from datapath_bench import small_decode_rate  # this folder is on sys.path (a script's own)

    print("## (e) what a map costs\n")
    if dry is not None:
        fwd = [dry["fwd"][n] for n in dry["names"]]
        run = dry["run"]
        images = run.get("images", 1)
        done = map_flops(fwd, images, 1, 1.0)
        rate = done / run["seconds"]
        print(f"Measured in (d): {done / 1e12:.1f} TFLOP in {run['seconds']:.0f} s = {rate / 1e9:.0f} GFLOP/s on this "
              "machine's CPU (loading included).\n")
    else:
        fwd, rate = [flops(n) for n in paper69_names()], None
    weights = [n for n in timm.list_pretrained() if "in1k" in n.partition(".")[2]]
    chosen = random.Random(seed).sample(weights, min(sample, len(weights)))
    sizes = {}
    for n in chosen:
        side = int((getattr(timm.models.get_pretrained_cfg(n), "input_size", None) or (3, 224, 224))[-1])
        try:
            sizes[n] = flops(n.partition(".")[0], side)
        except Exception:  # noqa: BLE001 - an architecture the meta device cannot run: left out, counted
            pass
    mean = statistics.fmean(sizes.values())
    boot = np.random.default_rng(seed)
    values = np.array(list(sizes.values()))
    lo, hi = np.percentile([boot.choice(values, len(values)).mean() for _ in range(2000)], [2.5, 97.5])
    every = len(weights)
    print(f"FLOPs per forward pass: paper69 (68 models, each at its own input size) mean {statistics.fmean(fwd) / 1e9:.1f} GFLOP; "
          f"timm's {every} pretrained ImageNet-1k classifier weights: a random sample of {len(sizes)} "
          f"({len(chosen) - len(sizes)} left out: not countable on the meta device) at each one's own input size, "
          f"mean {mean / 1e9:.1f} GFLOP (95% bootstrap CI {lo / 1e9:.1f}-{hi / 1e9:.1f}).\n")
    h100 = H100_BF16_DENSE / 3  # assumed achieved rate
    source = "measured in (f), or given" if decode_rate else "measured here on 64 generated JPEGs"
    decode_rate = decode_rate or small_decode_rate()
    rows = [("the paper's map: 68 models, 5,000 images, PGD-10", 68, [map_flops(fwd, 5000, 10, 0.8)] * 3),
            (f"every timm ImageNet-1k classifier: {every} models, 5,000 images, PGD-10", every,
             [map_flops([m] * every, 5000, 10, 0.8) for m in (mean, lo, hi)])]
    print(f"Decode rate: {decode_rate:.0f} images/s per core ({source}; JPEG 500x375 -> resize 256 -> crop 224).\n")
    print("| map | FLOPs (95% CI of the sample mean) | compute: H100 GPU-hours at 1/3 of bf16 peak (assumed) | "
          f"decode, today's path (N + 1 decodes per image, main process) | decode once on {DECODE_CORES} cores | "
          "wall-time estimate, today's path / decode once | on this machine's CPU at the rate measured in (d) |")
    print("|---|---|---|---|---|---|---|")
    for label, n, (total, low, high) in rows:
        span = f" ({low:.2e}-{high:.2e})" if low != high else ""
        compute = total / h100 / 3600
        hours = f"{compute:,.1f}" + (f" ({low / h100 / 3600:,.0f}-{high / h100 / 3600:,.0f})" if span else "")
        today = 5000 * (n + 1) / decode_rate / 3600  # serial with the models: the device waits for every decode
        once = 5000 / (decode_rate * DECODE_CORES) / 3600
        bound = "decode-bound" if today > compute else "compute-bound"
        cpu = f"{total / rate / 86400 / 365:,.1f} years" if rate else "-"
        print(f"| {label} | {total:.2e}{span} | {hours} h | {today:,.2f} h | {once * 3600:,.1f} s | "
              f"{compute + today:,.2f} h ({bound}) / {compute + once:,.2f} h (compute-bound) | {cpu} |")
    print("\nAssumptions: 80 % clean accuracy (X_AB = 64 % of the images), backward = 2 forward. The H100 rate is "
          "an assumption (one third of the 989 TFLOP/s dense bf16 peak) until `make bench-gpu` measures the "
          "achieved fraction on a GPU (docs/gpu.md); no GPU number is measured here. Today's path decodes on the "
          "main process while the device waits, so its decode time adds to the compute time; decoding once happens "
          f"before any model work, on {DECODE_CORES} cores (assumed; decoding scales with cores, it is "
          "independent per image).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="sections to skip, e.g. a,d (a and b run together)")
    parser.add_argument("--sizes", default="4,8,16,32")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--images", type=int, default=1, help="images of the paper69 dry run")
    parser.add_argument("--sample", type=int, default=300, help="timm IN-1k weights sampled for (e)")
    parser.add_argument("--cnn", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-images", type=int, default=1000, help="generated JPEGs of (f)")
    parser.add_argument("--decode-rate", type=float, help="images/s per core for (e) when (f) is skipped (as (f) "
                        "printed it); default: measured on 64 generated JPEGs")
    parser.add_argument("--dry-result", help="the raw (d) measurement a previous run kept (/tmp/satlab-bench-dry-run.json)")
    args = parser.parse_args()
    if args.cnn:
        print(json.dumps(cnn_run(args.cnn, args.budget)))
        return
    if args.dry_run:
        print(json.dumps(dry_run(args.dry_run) | {"images": args.dry_run}))
        return
    skip = set(args.skip.split(","))
    print(f"# satlab scale benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU core(s), torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s))\n")
    if "a" not in skip and "b" not in skip:
        section_memory_and_time([int(n) for n in args.sizes.split(",")])
    if "c" not in skip:
        from engine_vs_loop import section_plain_loop  # this folder is on sys.path (a script's own)

        section_plain_loop(args.rounds, QUIET)
    dry = section_dry_run(args.images, args.dry_result) if "d" not in skip else None
    decode_rate, printed = args.decode_rate, io.StringIO()
    if "f" not in skip:  # measured before (e), which uses its decode rate; printed after it
        from datapath_bench import MODELS, section_data_path

        with contextlib.redirect_stdout(printed):
            decode_rate = section_data_path(args.data_images, MODELS, 1)["rate"]
    if "e" not in skip:
        section_cost(dry, args.sample, 0, decode_rate)
    print(printed.getvalue(), end="")
    if "g" not in skip:
        from precision_bench import sections  # this folder is on sys.path (a script's own)

        print("## (g) maps at a stated precision\n")
        sections(set(), sample=args.sample)


if __name__ == "__main__":
    main()
