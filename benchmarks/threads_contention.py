"""Wall time of the main job, `gaqtool quantize --bits w4a8`, while another process keeps one
core busy: with the default thread count and with `--threads 1`.

The default picks one torch thread per free core (``gaqtool.threads``); the target is that the
default, with a core taken, is at most 1.5x the `--threads 1` time. Run it on an otherwise idle
machine (other jobs change both numbers):

    python benchmarks/threads_contention.py [--repeats 2] [--out benchmarks/results/threads_contention.json]

(gaqtool installed, or PYTHONPATH=src). ``--quick`` runs tiny settings, to check the script
itself, not to measure.

Each run is a fresh `python -m gaqtool quantize --bits w4a8` subprocess (import time included)
writing to a temporary directory; the spinning process is started before and stopped after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "while True: pass"


QUICK = ["--calib-frames", "2", "--eval-frames", "2", "--lee-frames", "1", "--lee-rotations", "1"]


def main_job(extra: list[str], directory: Path) -> float:
    """Seconds of one `gaqtool quantize --bits w4a8` run (exit code checked)."""
    command = [sys.executable, "-m", "gaqtool", "quantize", "--bits", "w4a8",
               "-o", str(directory / "quantized.safetensors"), "--json", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"gaqtool failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def timed(extra: list[str], busy: bool, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
        try:
            time.sleep(1.0 if busy else 0.0)  # let the spinner occupy its core first
            with tempfile.TemporaryDirectory() as directory:
                times.append(main_job(extra, Path(directory)))
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test, not a measurement")
    args = parser.parse_args()
    quick = QUICK if args.quick else []
    cases = {
        "default threads, one core busy": ([], True),
        "--threads 1, one core busy": (["--threads", "1"], True),
        "--threads 1, idle": (["--threads", "1"], False),
        "default threads, idle": ([], False),
    }
    results = {}
    for name, (extra, busy) in cases.items():
        times = timed(extra + quick, busy, args.repeats)
        results[name] = {"seconds": times, "median_s": statistics.median(times)}
        print(f"{name:34s} {statistics.median(times):7.1f} s  ({', '.join(f'{t:.1f}' for t in times)})",
              flush=True)
    ratio = (results["default threads, one core busy"]["median_s"]
             / results["--threads 1, one core busy"]["median_s"])
    print(f"default / --threads 1 with one core busy: {ratio:.2f}x (target <= 1.5x)")
    if args.out:
        args.out.write_text(json.dumps({
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "repeats": args.repeats, "quick": args.quick, "results": results, "busy_over_single_thread": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
