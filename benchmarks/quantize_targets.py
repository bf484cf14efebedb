"""Targets of `gaqtool quantize` on the embedded aspirin model, measured in one run.

For FP32, weight-only, naive and GAQ (MDDQ) quantization: energy/force MAE on the rMD17 test
frames, LEE (finite Haar rotations, FP32 floor beside it), file sizes; and the wall time of the
whole `gaqtool quantize` command (a subprocess, default options).

    python benchmarks/quantize_targets.py --rmd17-dir ../shared/data/rmd17 --frames 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.atomic import atomic_write
from gaqtool.io.checkpoint import default_model_path
from gaqtool.io.loading import file_sha256, load_model
from gaqtool.io.safetensors_io import save_quantized
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.workflow import quantize_loaded

# (row name, bits, QuantConfig options); "gaq" rows use the defaults (frame directions, MSE
# clipping, GPTQ rounding, species embedding kept FP32)
VARIANTS = [("weight-only w4", "w4", dict(method="weight-only")),
            ("weight-only w4 nearest", "w4", dict(method="weight-only", weight_rounding="nearest")),
            ("naive w4a8", "w4a8", dict(method="naive")),
            ("gaq w4a8", "w4a8", {}), ("gaq w4a8 embedding quantized", "w4a8", dict(keep_fp32=())),
            ("gaq w4a8 nearest", "w4a8", dict(weight_rounding="nearest")),
            ("gaq w4a8 component", "w4a8", dict(direction_mode="component")),
            ("naive w8a8", "w8a8", dict(method="naive")), ("gaq w8a8", "w8a8", {}), ("gaq w2a8", "w2a8", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--rmd17-dir", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=1000, help="test frames for MAE")
    parser.add_argument("--lee-frames", type=int, default=50)
    parser.add_argument("--lee-rotations", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quantize_targets.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    test = resolve_data("rmd17", "test", args.rmd17_dir, loaded.molecule)
    calib = resolve_data("rmd17", "train", args.rmd17_dir, loaded.molecule)
    frames = test.frames.subset(range(min(args.frames, len(test.frames))))
    lee_frames = frames.subset(range(min(args.lee_frames, len(frames))))
    print(f"# {test.note}\n# calibration: {calib.note}", flush=True)
    rows = {"fp32": {"accuracy": accuracy_metrics(predict(loaded.model, frames), frames),
                     "lee": local_equivariance_error(loaded.model, lee_frames, args.lee_rotations, seed=0),
                     "file_bytes": args.model.stat().st_size}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bits, options in VARIANTS:
            config = QuantConfig.from_preset(bits, **options)
            model, plan = quantize_loaded(loaded.model, config, calib.frames)
            path = Path(tmp) / f"{name.replace(' ', '_')}.safetensors"
            save_quantized(path, model, config, plan, file_sha256(args.model))
            rows[name] = {
                "accuracy": accuracy_metrics(predict(model, frames), frames),
                "lee": local_equivariance_error(model, lee_frames, args.lee_rotations, seed=0),
                "file_bytes": path.stat().st_size}
            print(f"done {name}", flush=True)
        command = [sys.executable, "-m", "gaqtool", "quantize", str(args.model), "--bits", "w4a8",
                   "-o", str(Path(tmp) / "cli.safetensors"), "--threads", str(args.threads)]
        if args.rmd17_dir:
            command += ["--rmd17-dir", str(args.rmd17_dir)]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        cli_seconds = time.perf_counter() - started
        cli_bytes = (Path(tmp) / "cli.safetensors").stat().st_size  # with its report in the header
    fp32 = rows["fp32"]
    lines = ["| model | energy MAE (meV) | force MAE (meV/A) | E / FP32 | F / FP32 | LEE force mean (meV/A) "
             "| LEE force max | LEE / FP32 floor | file (KiB) | FP32 file / file |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        acc, lee = row["accuracy"], row["lee"]
        lines.append(
            f"| {name} | {acc['energy_mae_mev']:.2f} | {acc['force_mae_mev_a']:.2f} "
            f"| {acc['energy_mae_mev'] / fp32['accuracy']['energy_mae_mev']:.3f} "
            f"| {acc['force_mae_mev_a'] / fp32['accuracy']['force_mae_mev_a']:.3f} "
            f"| {lee['force_mean_mev_a']:.4g} | {lee['force_max_mev_a']:.4g} "
            f"| {lee['force_mean_mev_a'] / fp32['lee']['force_mean_mev_a']:.1f} "
            f"| {row['file_bytes'] / 1024:.1f} | {fp32['file_bytes'] / row['file_bytes']:.2f} |")
    naive, gaq = rows["naive w4a8"]["lee"]["force_mean_mev_a"], rows["gaq w4a8"]["lee"]["force_mean_mev_a"]
    lines.append(f"\nLEE naive W4A8 / GAQ W4A8 = {naive / gaq:.1f}x; `gaqtool quantize --bits w4a8` "
                 f"(calibration, packing, report) took {cli_seconds:.1f} s on {args.threads} threads; "
                 f"{len(frames)} test frames, LEE on {len(lee_frames)} frames x {args.lee_rotations} rotations. "
                 f"Its file (report included) is {cli_bytes} bytes: FP32 checkpoint / file = "
                 f"{fp32['file_bytes'] / cli_bytes:.2f}x (table rows are written without a report).")
    print("\n".join(lines))
    text = json.dumps({"rows": rows, "cli_seconds": cli_seconds, "cli_file_bytes": cli_bytes,
                       "threads": args.threads, "data": test.note}, indent=2)
    atomic_write(args.out, lambda tmp_path: tmp_path.write_text(text))


if __name__ == "__main__":
    main()
