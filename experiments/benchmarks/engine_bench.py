"""Benchmark of the SAT engine, in one run on the same model set and inputs. Prints a markdown table.

1. the engine (N attacks + N^2 forward passes on X_AB) vs the naive pairwise loop (a torchattacks PGD run for
   every ordered pair on X_AB), measured interleaved (engine, naive, engine, naive, ...: both sides see the same
   machine load), with the speed-up next to its ideal N - 1 and the target 0.8 (N - 1);
2. one PGD attack vs bare `steps x (forward + backward)` of the same model (target <= 1.15x) and vs
   torchattacks.PGD (target <= 1.0x);
3. the engine's peak memory at S and 4S samples (each in a fresh process);
4. on a GPU: attack throughput (images x steps per second, bf16 autocast) and its fraction of the FLOP-limited
   rate (FLOPs of one step counted by torch.utils.flop_counter, peak = a measured bf16 matmul rate).

    python experiments/benchmarks/engine_bench.py                  # digits zoo (trains it once if not cached)
    python experiments/benchmarks/engine_bench.py --model-set timm_tiny --samples-per-class 10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
warnings.filterwarnings("ignore")
for _name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def setup(model_set: str, samples_per_class: int, device: str, batch_size: int):
    """The models, eval data and attack, exactly as `satlab model_set=... dataset.samples_per_class=...` builds them."""
    from satlab.tasks.common import build, open_models

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model_set={model_set}", f"dataset.samples_per_class={samples_per_class}",
                                           "paths.output_dir=/tmp/satlab-bench", "logger=none",
                                           f"sat.batch_size={batch_size}"])
    data = build(cfg, "dataset")
    quiet = {"accelerator": "cpu" if device == "cpu" else "gpu", "enable_progress_bar": False}
    models = open_models(cfg, data)
    loaded = [models.load(i) for i in range(len(models))]
    return cfg, data, (models, loaded), build(cfg, "attack"), quiet


def timed(fn, repeats: int = 7) -> float:
    """Median wall time of `fn()` in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_attack(model, x, y, attack) -> dict[str, float]:
    """Our PGD vs bare steps x (forward + backward) vs torchattacks.PGD, same model, inputs, budget, steps."""
    import torchattacks

    def bare() -> None:
        xa = x.clone()
        for _ in range(attack.steps):
            xa.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
            xa = xa.detach() + g.sign()

    ta = torchattacks.PGD(model, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, random_start=True)
    seeds = torch.arange(len(x))
    return {
        "ours": timed(lambda: attack(model, x, y, seeds)),
        "bare": timed(bare),
        "torchattacks": timed(lambda: ta(x, y)),
    }


def gpu_throughput(model, x, y, attack) -> dict[str, float]:
    """Images x steps per second of one attack under bf16 autocast, and its fraction of the FLOP-limited rate."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to(memory_format=torch.channels_last)
    xa = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        torch.autograd.grad(F.cross_entropy(model(xa).float(), y, reduction="sum"), xa)
    step_flops = counter.get_total_flops() / len(x)

    def run() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            attack(model, x, y, torch.arange(len(x)))

    seconds = timed(run, repeats=5)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    peak = 2 * 8192**3 / timed(lambda: a @ a, repeats=10)
    rate = len(x) * attack.steps / seconds
    return {"rate": rate, "flops": step_flops, "achieved": rate * step_flops, "peak": peak}


def compute_floor(models, x, y, correct, attack, batch_size: int) -> dict[str, float]:
    """The speed-up an engine with no overhead at all would reach over the naive loop, from measured parts.

    Both sides run the same N clean passes and the same N^2 target evaluations on X_AB; only the attacks differ
    (N on X_A vs N^2 on X_AB). Each model's attack time per image (on its X_A) and forward time per image are
    measured here, and the two sides' work is summed from the pair sizes |X_AB| of this run's records.
    """
    n = len(models)
    joint = (correct[:, None, :] & correct[None, :, :]).sum(2)  # |X_AB|
    attack_per_image, forward_per_image = [], []
    for m, model in enumerate(models):
        keep = torch.from_numpy(correct[m]).nonzero().squeeze(1)
        xs, ys = x[keep], y[keep]
        chunks = [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, len(xs), batch_size)]

        def forward() -> None:
            with torch.inference_mode():
                for xb, _ in chunks:
                    model(xb)

        attack_per_image.append(timed(lambda: [attack(model, xb, yb) for xb, yb in chunks], repeats=3) / len(xs))
        forward_per_image.append(timed(forward, repeats=3) / len(xs))
    evaluations = sum(forward_per_image[t] * (x.shape[0] + joint[:, t].sum()) for t in range(n))
    engine = sum(attack_per_image[m] * correct[m].sum() for m in range(n)) + evaluations
    naive = sum(attack_per_image[a] * joint[a, b] for a in range(n) for b in range(n)) + evaluations
    return {"ceiling": naive / engine, "evaluation_share": evaluations / engine}


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory(model_set: str, samples_per_class: int, device: str, batch_size: int) -> dict[str, float]:
    """Run the engine in this process; its peak resident memory above what it was just before (MiB)."""
    import threading

    from satlab.models import ModelSet
    from satlab.sat.engine import compute_records

    cfg, data, loaded, attack, quiet = setup(model_set, samples_per_class, device, batch_size)
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    compute_records(ModelSet.from_models(loaded[0].names, loaded[1]), data.eval, attack,
                    batch_size=int(cfg.sat.batch_size), trainer_cfg=quiet)
    done.set()
    sampler.join()
    out = {"samples": len(data.eval), "rss": max(peak[0], _rss_mib()) - before}
    if device == "cuda":
        out["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-set", default="digits_zoo")
    parser.add_argument("--samples-per-class", type=int, default=9, help="S = 10 x this on digits (4S <= 360)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved engine/naive rounds (medians reported)")
    parser.add_argument("--speedup-only", action="store_true", help="only the engine vs naive comparison")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps(peak_memory(args.model_set, args.samples_per_class, args.device, args.batch_size)))
        return

    import torchattacks

    from satlab.models import ModelSet
    from satlab.sat.engine import compute_records
    from satlab.sat.metric import whitebox_success
    from satlab.sat.reference import pairwise_records

    cfg, data, loaded, attack, quiet = setup(args.model_set, args.samples_per_class, args.device, args.batch_size)
    models, names = [m.to(args.device) for m in loaded[1]], loaded[0].names
    n, s = len(models), len(data.eval)
    print(f"# satlab engine benchmark: {args.model_set}, {n} models, {s} samples, {attack.name} "
          f"eps={attack.eps:.4f} steps={attack.steps}, device={args.device}, torch threads={torch.get_num_threads()}\n")

    def ta_attack(model, x, y, seeds):
        return torchattacks.PGD(model, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, random_start=True)(x, y)

    def engine():
        return compute_records(ModelSet.from_models(names, models), data.eval, attack,
                               batch_size=int(cfg.sat.batch_size), trainer_cfg=quiet).records

    load_before = os.getloadavg()
    wall: dict[str, list[float]] = {"engine": [], "naive": []}
    cpu: dict[str, list[float]] = {"engine": [], "naive": []}  # this process's CPU time: robust to other load
    for _ in range(args.rounds):  # interleaved: both sides under the same load
        for side, fn in (("engine", engine), ("naive", lambda: pairwise_records(
                models, names, data.eval, ta_attack, batch_size=int(cfg.sat.batch_size)))):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = fn()
            wall[side].append(time.perf_counter() - start)
            cpu[side].append(time.process_time() - start_cpu)
            if side == "engine":
                rec = out
    load_after = os.getloadavg()
    t_engine, t_naive = statistics.median(wall["engine"]), statistics.median(wall["naive"])
    ratio_wall = statistics.median(n_ / e_ for n_, e_ in zip(wall["naive"], wall["engine"]))
    ratio_cpu = statistics.median(n_ / e_ for n_, e_ in zip(cpu["naive"], cpu["engine"]))
    rounds = "; ".join(f"engine {we:.1f} s wall / {ce:.1f} s CPU, naive {wn:.1f} s / {cn:.1f} s" for we, ce, wn, cn
                       in zip(wall["engine"], cpu["engine"], wall["naive"], cpu["naive"]))
    print(f"engine vs naive, {args.rounds} interleaved round(s): {rounds}; load average (1 min) {load_before[0]:.1f} "
          f"before, {load_after[0]:.1f} after, on {os.cpu_count()} CPU(s)\n")
    print("| speed-up of the engine over the naive loop (median over rounds) | by CPU time | by wall time | "
          "ideal N - 1 | target 0.8 (N - 1) |")
    print("|---|---|---|---|---|")
    print(f"| {n} models x {s} samples | {ratio_cpu:.2f}x | {ratio_wall:.2f}x | {n - 1}x | {0.8 * (n - 1):.1f}x "
          f"({'met' if min(ratio_cpu, ratio_wall) >= 0.8 * (n - 1) else 'NOT met'}) |\n")
    x, y, _ = next(iter(torch.utils.data.DataLoader(data.eval, batch_size=len(data.eval))))
    x, y = x.to(args.device), y.to(args.device)
    floor = compute_floor(models, x, y, rec.correct, attack, int(cfg.sat.batch_size))
    print(f"Why not N - 1: both sides run the same clean passes and N^2 = {n * n} target evaluations, "
          f"{floor['evaluation_share']:.0%} of the engine's work here. From each model's attack and forward time "
          f"per image, measured separately (an estimate: this machine's timing noise is about 10 %), an engine with "
          f"no overhead at all would be {floor['ceiling']:.2f}x faster than the naive loop; the measured speed-up is "
          f"{min(ratio_cpu, ratio_wall) / floor['ceiling']:.0%} of that (the estimate times satlab's attack for "
          "both sides, not torchattacks').\n")
    if args.speedup_only:
        return
    first = models[0]
    atk = bench_attack(first, x, y, attack)

    mem = []
    for spc in (args.samples_per_class, 4 * args.samples_per_class):
        done = subprocess.run([sys.executable, __file__, "--memory-only", "--model-set", args.model_set,
                               "--samples-per-class", str(spc), "--device", args.device,
                               "--batch-size", str(args.batch_size)],
                              capture_output=True, text=True, check=True)
        mem.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print("| measurement | satlab | baseline | ratio (satlab / baseline) | target |")
    print("|---|---|---|---|---|")
    print(f"| full SAT map, {n} models x {s} samples | engine {t_engine:.1f} s | naive pairwise loop "
          f"({n * (n - 1) + n} torchattacks PGD runs) {t_naive:.1f} s | {t_engine / t_naive:.3f} | < 1 |")
    print(f"| one PGD attack ({names[0]}, batch {len(x)}, {attack.steps} steps) | {atk['ours'] * 1e3:.1f} ms | "
          f"bare steps x (fwd+bwd) {atk['bare'] * 1e3:.1f} ms | {atk['ours'] / atk['bare']:.3f} | <= 1.15 |")
    print(f"| same attack | {atk['ours'] * 1e3:.1f} ms | torchattacks.PGD {atk['torchattacks'] * 1e3:.1f} ms | "
          f"{atk['ours'] / atk['torchattacks']:.3f} | <= 1.0 |")
    for key in ("rss", "cuda"):
        if key in mem[0]:
            a, b = mem[0][key], mem[1][key]
            print(f"| engine peak memory ({key}, above the loaded models) | S={mem[0]['samples']}: {a:.0f} MiB | "
                  f"4S={mem[1]['samples']}: {b:.0f} MiB | {b / max(a, 1e-9):.2f} (4S / S) | ~1 |")
    if args.device == "cuda":
        gpu = gpu_throughput(first, x, y, attack)
        print(f"\nGPU attack throughput ({names[0]}, batch {len(x)}, bf16 autocast): {gpu['rate']:.0f} images x steps "
              f"per s; {gpu['flops'] / 1e9:.2f} GFLOP per image-step; {gpu['achieved'] / 1e12:.1f} TFLOP/s achieved of "
              f"{gpu['peak'] / 1e12:.0f} TFLOP/s measured bf16 matmul peak = {gpu['achieved'] / gpu['peak']:.1%} of the "
              "FLOP-limited rate")
    success = whitebox_success(rec.correct, rec.fooled)
    print("\nwhite-box success per model (%): " + ", ".join(f"{nm} {v:.0f}" for nm, v in zip(names, success)))


if __name__ == "__main__":
    main()
