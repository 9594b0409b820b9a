"""GPU benchmark, prepared to run in one call on a machine with a CUDA device (`make bench-gpu`).

For resnet50, vit_small_patch16_224 and convnext_tiny (timm, random weights, 1000 classes) at 224 px, bf16
autocast and channels_last, as the engine runs them:

1. attack throughput: images x PGD steps per second (satlab's PGD-Linf, batch 128);
2. evaluation throughput: images per second of the forward pass under inference mode (batch 512);
3. FLOPs per image (torch's flop counter) -> achieved TFLOP/s and its fraction of the FLOP-limited rate (a
   measured bf16 matmul rate of this GPU) and of the data-sheet peak when the GPU is an H100/H200;
4. peak device memory of each measurement;
5. the engine end to end: a map of the three models on 512 synthetic images with one class (every image in every
   X_AB), its time against the FLOPs it had to do;
6. the paper-scale estimate: the paper's map (68 models, 5,000 images, PGD-10) and a map of every timm ImageNet-1k
   classifier, at the achieved rate;
7. the data path on the device (`datapath_bench.py`): a map of two models of the first architecture on 1,000
   generated ImageNet-sized JPEGs, today's path (a decode per pass) against decoding once, then the images per
   second of phase 1 (clean pass + attack of each source) and phase 2 (evaluations) of the decode-once run, from the
   engine's own clock (`summary.json`'s engine_time), against the FLOP-limited rate of the measured matmul rate.

    python experiments/benchmarks/gpu_bench.py                    # prints a markdown report
    python experiments/benchmarks/gpu_bench.py --device cpu --batch 2 --steps 1 --images 8   # the code path
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
MODELS = ["resnet50", "vit_small_patch16_224", "convnext_tiny"]
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, FLOP/s


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 5) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_flops(model, x, y) -> tuple[float, float]:
    """FLOPs per image of one forward pass and of one attack step (forward + backward to the input)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        model(x[:1])
    xa = x[:1].clone().requires_grad_(True)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # as in the attack: the gradient to the input only
        p.requires_grad_(False)
    try:  # .backward(), not autograd.grad: the counter's module hooks refuse autograd.grad on a leaf
        with FlopCounterMode(display=False) as step:
            F.cross_entropy(model(xa).float(), y[:1], reduction="sum").backward()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return float(fwd.get_total_flops()), float(step.get_total_flops())


def peak_matmul(device: str) -> float:
    n = 8192 if device == "cuda" else 512
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ a, device, repeats=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128, help="attack batch (evaluation: 4x)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=512, help="images of the end-to-end engine map")
    parser.add_argument("--models", default=",".join(MODELS), help="timm architectures, comma-separated")
    parser.add_argument("--jpegs", type=int, default=1000, help="generated JPEGs of the data-path section (7)")
    args = parser.parse_args()
    archs = args.models.split(",")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (run on a machine with a GPU)")
        return
    import timm

    from satlab.attacks import create_attack
    from satlab.models.factory import build_model
    from satlab.models.specs import ModelSpec

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak = peak_matmul(device)
    sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    print(f"# satlab GPU benchmark: {name}, torch {torch.__version__}, timm {timm.__version__}\n")
    print(f"Measured {'bf16' if device == 'cuda' else 'fp32'} matmul rate: {peak / 1e12:.3g} TFLOP/s"
          + (f" (data sheet, dense bf16: {sheet / 1e12:.0f})" if sheet else "") + "\n")
    attack = create_attack("pgd_linf", eps=8 / 255, steps=args.steps)
    cast = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    rows, rates = [], []
    for arch in archs:
        model = build_model(ModelSpec(arch, arch, pretrained=False, input_size=224), 1000, 224).to(device)
        if device == "cuda":
            model = model.to(memory_format=torch.channels_last)
        x = torch.rand(args.batch * 4, 3, 224, 224, device=device)
        if device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (len(x),), device=device)
        with cast:
            fwd, step = step_flops(model, x, y)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            xa, ya = x[:args.batch], y[:args.batch]
            seconds = timed(lambda: attack(model, xa, ya, torch.arange(len(xa))), device)
            attack_mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "-"
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()

            def evaluate() -> None:
                with torch.inference_mode():
                    model(x).argmax(1)

            eval_seconds = timed(evaluate, device)
            eval_mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "-"
        attack_rate = len(xa) * args.steps / seconds
        eval_rate = len(x) / eval_seconds
        achieved = (attack_rate * step, eval_rate * fwd)
        rates.append(achieved)
        rows.append((arch, fwd, attack_rate, achieved[0], attack_mem, eval_rate, achieved[1], eval_mem))
    print("| model | GFLOP / image (fwd) | attack: images x steps / s | TFLOP/s (of matmul rate) | peak memory "
          "| evaluation: images / s | TFLOP/s (of matmul rate) | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for arch, fwd, ar, aa, am, er, ea, em in rows:
        print(f"| {arch} | {fwd / 1e9:.3g} | {ar:,.1f} | {aa / 1e12:.3g} ({aa / peak:.0%}) | {am} | "
              f"{er:,.1f} | {ea / 1e12:.3g} ({ea / peak:.0%}) | {em} |")
    engine_rate = engine_map(device, archs, args.images, args.steps)
    data_path(device, archs[0], args.jpegs, args.steps, args.batch, rows[0][1], peak)
    from experiments.benchmarks.scale_bench import map_flops, paper69_names, flops

    fwd69 = [flops(n) for n in paper69_names()]
    paper = map_flops(fwd69, 5000, 10, 0.8)
    every = len([n for n in timm.list_pretrained() if "in1k" in n.partition(".")[2]])
    everything = map_flops([statistics.fmean(fwd69)] * every, 5000, 10, 0.8)
    print(f"\nEngine end to end: {engine_rate / 1e12:.3g} TFLOP/s achieved on a map of the {len(archs)} models "
          f"({engine_rate / peak:.0%} of the measured matmul rate).\n")
    unit = "GPU-hours" if device == "cuda" else f"{device}-hours"
    print(f"Paper-scale estimate at the engine's achieved rate: the paper's map ({paper:.2e} FLOPs) "
          f"{paper / engine_rate / 3600:,.1f} {unit}; every timm ImageNet-1k classifier ({every} models, with "
          f"paper69's mean FLOPs, {everything:.2e} FLOPs) {everything / engine_rate / 3600:,.0f} {unit}.")


def data_path(device: str, arch: str, images: int, steps: int, batch: int, fwd: float, peak: float) -> None:
    """Section 7 (module docstring): `fwd` = forward FLOPs per image of `arch`, `peak` the matmul rate."""
    sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
    from datapath_bench import section_data_path

    result = section_data_path(images, [arch, arch], steps, device, batch)
    new = result["new"]
    accuracy = float(new["records"].correct.mean())
    passes = {"attack": 1 + 3 * steps * accuracy + accuracy,  # per source image: clean, attack, own evaluation
              "evaluate": accuracy}  # per source image: the other model's evaluation on X_AB (about accuracy)
    print(f"Phases of the decode-once run ({arch} twice, {images} JPEGs, clean accuracy {accuracy:.0%}):\n")
    print("| phase | source images / s (waiting + transfer + models) | FLOP-limited images / s | fraction | "
          "waiting for data |")
    print("|---|---|---|---|---|")
    for kind, per_image in passes.items():
        clock = new["path"].get(kind)
        if not clock:
            continue
        seconds = clock["wait_s"] + clock["transfer_s"] + clock["compute_s"]
        rate = 2 * images / seconds  # both models are sources
        limit = peak / (fwd * per_image)
        print(f"| {kind} | {rate:,.1f} | {limit:,.1f} | {rate / limit:.0%} | {clock['wait_s'] / seconds:.1%} |")
    print()


def engine_map(device: str, archs: list[str], images: int, steps: int) -> float:
    """The engine on the models `archs` and `images` synthetic images with one class; achieved FLOP/s."""
    from satlab.attacks import create_attack
    from satlab.data.common import TensorImages
    from satlab.models import ModelSet, TimmSource
    from satlab.models.specs import ModelSpec
    from satlab.sat.engine import compute_records
    from experiments.benchmarks.scale_bench import flops, map_flops

    models = ModelSet([TimmSource(ModelSpec(a, a, pretrained=False, input_size=224), 1, 224) for a in archs])
    models.keys()
    data = TensorImages(torch.randint(0, 256, (images, 3, 224, 224), dtype=torch.uint8), [0] * images, range(images))
    trainer = {"accelerator": "gpu" if device == "cuda" else "cpu", "enable_progress_bar": False}
    start = time.perf_counter()
    result = compute_records(models, data, create_attack("pgd_linf", eps=8 / 255, steps=steps), batch_size=256,
                             trainer_cfg=trainer, num_workers=4 if device == "cuda" else 0)
    seconds = time.perf_counter() - start
    assert result.records is not None and result.records.correct.all()
    return map_flops([flops(a) for a in archs], images, steps, 1.0) / seconds


if __name__ == "__main__":
    main()
