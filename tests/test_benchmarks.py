"""The benchmark scripts' own code: the GPU benchmark's code path runs (on CPU, tiny timm models) so that a
session lent a GPU finds it working, and the interval that the scale benchmark's section (c) prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))


def test_median_interval_takes_the_order_statistics_of_the_sign_test():
    from engine_vs_loop import median_interval

    assert median_interval([5, 1, 9, 3, 7, 2, 8, 4, 6]) == (5, 2, 8)  # n=9: 2nd and 8th (96 %)
    assert median_interval(list(range(20))) == (9.5, 5, 14)  # n=20: 6th and 15th (95.9 %)
    assert median_interval([1.0, 3.0, 2.0]) == (2.0, 1.0, 3.0)  # too few for 95 %: min and max


def test_gpu_benchmark_code_path_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SATLAB_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmarks" / "gpu_bench.py"), "--device", "cpu", "--batch", "2",
         "--steps", "1", "--images", "4", "--models", "test_resnet,test_vit", "--jpegs", "6"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=290)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| test_resnet", "| test_vit"))]
    assert len(rows) == 2
    for row in rows:  # GFLOP/image, attack rate, evaluation rate: measured, positive
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2].replace(",", "")) > 0 and float(cells[5].replace(",", "")) > 0
    assert re.search(r"Engine end to end: [0-9.e+-]+ TFLOP/s achieved on a map of the 2 models", out.stdout)
    assert re.search(r"the paper's map \(4\.0\de\+17 FLOPs\) [0-9,.]+ cpu-hours", out.stdout)
    assert "Records bitwise equal: True" in out.stdout  # the data-path section (7) on the device's path
    phases = [line for line in out.stdout.splitlines() if line.startswith(("| attack |", "| evaluate |"))]
    assert len(phases) == 2 and all(float(line.split("|")[2].replace(",", "")) > 0 for line in phases)


def test_data_path_benchmark_counts_one_decode_per_image_and_equal_records(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SATLAB_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmarks" / "datapath_bench.py"), "--images", "8",
         "--models", "test_resnet,test_resnet", "--steps", "1", "--batch", "4", "--tree", str(tmp_path / "jpegs")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=290)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "jpegs").rglob("*.jpg"))) == 8
    decodes = next(line for line in out.stdout.splitlines() if line.startswith("| decodes per image"))
    today, new = (float(c) for c in decodes.split("|")[2:4])
    assert new == 1.0 and today > 2.0  # counted: once per map, against once per pass (fingerprint + 2 sources)
    assert "Records bitwise equal: True" in out.stdout and "decoded 0 image(s)" in out.stdout
    assert re.search(r"Decode rate .*: [0-9]+ images/s on 1 thread", out.stdout)
