"""Benchmark of the ensemble analysis on synthetic probabilities at paper scale (not a timed test).

69 models x 5,000 images x 1,000 classes of synthetic float16 log-probabilities (what the prediction pass
caches), then everything `task=ensemble` computes from them: all 2,346 pairs, the correlation table (bootstrap
CIs over images, permutation p-values over model labels) and every team strategy for k = 2..5. Target: under 60 s
on 2 cores. Prints the time of each stage and the peak resident memory as a markdown table.

    python experiments/benchmarks/ensemble_bench.py                       # the paper-scale setting
    python experiments/benchmarks/ensemble_bench.py --models 20 --samples 1000 --classes 100
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from satlab.ensemble.combine import Scorer
from satlab.ensemble.pairs import pair_results
from satlab.ensemble.stats import correlation_table
from satlab.ensemble.teams import STRATEGIES, team_table


def synthetic(models: int, samples: int, classes: int, seed: int = 0):
    """Log-probabilities [N,S,C] float16 of models of varied skill, labels [S], and a symmetric SAT-like matrix.

    Logits are scaled (x4) so that outputs are peaked like a trained classifier's (most mass on a few classes);
    the scale does not change any argmax, only how often the scorer's top-k shortcut needs its fallback.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (samples,), generator=gen)
    shared = torch.randn(samples, classes, generator=gen)  # image difficulty every model sees
    out = torch.empty(models, samples, classes, dtype=torch.float16)
    for m in range(models):
        z = 0.5 * shared + torch.randn(samples, classes, generator=gen)
        z[torch.arange(samples), labels] += 3.0 + 1.5 * torch.rand(1, generator=gen)
        out[m] = torch.log_softmax(4.0 * z, dim=1).half()
    sat = torch.rand(models, models, generator=gen).numpy() * 4.0
    return out, labels.numpy(), 0.5 * (sat + sat.T)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=69)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--max-k", type=int, default=5)
    parser.add_argument("--random-teams", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--combine", default="mean_softmax")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=5, help="candidate classes per member (Scorer.top)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [f"m{i}" for i in range(args.models)]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    log_probs, labels, sat = synthetic(args.models, args.samples, args.classes)
    timings["synthetic data (not counted)"] = time.perf_counter() - start

    start, cpu_start = time.perf_counter(), time.process_time()
    tick = time.perf_counter()
    scorer = Scorer(log_probs, labels, args.combine, top=args.top)
    del log_probs
    timings[f"scorer setup (top-{args.top} classes of each model)"] = time.perf_counter() - tick
    tick = time.perf_counter()
    pairs = pair_results(scorer, names)
    timings[f"{len(pairs.table)} pairs"] = time.perf_counter() - tick
    tick = time.perf_counter()
    stats = correlation_table(pairs.correct, scorer.correct.numpy(), pairs.first, pairs.second, sat,
                              n_boot=args.bootstrap, n_perm=args.permutations)
    label = f"correlations ({args.bootstrap} bootstraps, {args.permutations} permutations)"
    timings[label] = time.perf_counter() - tick
    tick = time.perf_counter()
    teams, _ = team_table(scorer, names, sat, list(range(2, args.max_k + 1)), list(STRATEGIES), args.random_teams)
    timings[f"teams k=2..{args.max_k}, {len(STRATEGIES)} strategies ({args.random_teams} random)"] = \
        time.perf_counter() - tick
    total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    load = os.getloadavg()

    print(f"ensemble benchmark: {args.models} models, {args.samples} images, {args.classes} classes, "
          f"rule {args.combine}, top {args.top}, {torch.get_num_threads()} threads")
    print("\n| stage | seconds |\n|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"| **total (all but the synthetic data), wall** | **{total:.2f}** |")
    print(f"| total CPU time of this process | {cpu_total:.2f} |")
    print(f"\nload average (1, 5, 15 min) at the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} on "
          f"{os.cpu_count()} cores (other processes share the CPU: wall time above CPU time means waiting)")
    print(f"\npeak resident memory: {peak_mib():.0f} MiB")
    conf = float(scorer.top_scores[:, :, 0].mean())
    print(f"mean top-1 probability of a model {conf:.3f}, mean model accuracy {scorer.accuracy.mean():.3f}")
    print(f"sanity: mean pair accuracy {pairs.table['accuracy'].mean():.4f}, "
          f"rho(gain, SAT) = {stats.iloc[0]['r']:.3f} (random SAT: expect ~0), teams rows {len(teams)}")


if __name__ == "__main__":
    main()
