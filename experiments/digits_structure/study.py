"""Which setting of the embedded default best shows architecture structure? (issue 8, item 6)

Runs `satlab task=sat` on the digits zoo once per setting (each a list of command-line overrides: attack budget,
steps, step size, random start, the width of the ResNet-18 twins) and prints one markdown table: the models'
accuracy range, the mean white-box success, the same-family vs cross-family AUC and the rank of the seed twins
(resnet18_s0 / resnet18_s1) among the 36 pairs (`satlab.analysis.structure`). Zoo models and records are cached,
so a setting that only changes the attack reuses the zoo, and a rerun of the study reuses everything.

    python experiments/digits_structure/study.py                    # every setting below
    python experiments/digits_structure/study.py --only default eps16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the ResNet-18 twins at 1/8 width: the default zoo before the study (stage channels 8-64 instead of 64-512)
NARROW = ["model_set.catalog.resnet18_s0.model_args.channels=[8,16,32,64]",
          "model_set.catalog.resnet18_s1.model_args.channels=[8,16,32,64]"]
EPS16, EPS8 = "attack.eps=0.0627450980392157", "attack.eps=0.0313725490196078"
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "eps16": [EPS16],
    "narrow": NARROW,
    "narrow_eps16": [*NARROW, EPS16],
    "narrow_eps8": [*NARROW, EPS8],
    "narrow_steps40": [*NARROW, "attack.steps=40", "attack.step_size=0.0078431372549020"],
    "narrow_no_random_start": [*NARROW, "attack.random_start=false"],
    "narrow_fgsm": [*NARROW, "attack=fgsm", "attack.eps=0.1254901960784314"],
}


def run(name: str, overrides: list[str], out: Path) -> dict:
    """One task=sat run; its summary plus the wall time."""
    run_dir = out / name
    cmd = [sys.executable, "-m", "satlab.cli", "task=sat", "logger=none", "sat.print_table=false",
           "sat.n_bootstrap=0", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"setting {name} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {**summary, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default=None, help="run dirs go here (default: a temporary folder)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="satlab-structure-"))
    print("| setting | overrides | clean accuracy (min-max) | mean white-box success | same-family AUC | "
          "twins' rank (of 36) | run time |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only:
        s = run(name, SETTINGS[name], out)
        acc = list(s["clean_accuracy"].values())
        white = list(s["whitebox_success"].values())
        shape = s["structure"]
        twins = ", ".join("no value" if t[2] is None else str(t[2]) for t in shape["twins_rank"]) or "-"
        auc = shape["same_family_auc"]
        print(f"| {name} | {' '.join(f'`{o}`' for o in SETTINGS[name]) or '(none)'} | {min(acc):.1%}-{max(acc):.1%} "
              f"| {sum(white) / len(white):.1f}% | {'n/a' if auc is None else f'{auc:.2f}'} | {twins} | "
              f"{s['seconds']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
