"""Energy + forces latency and peak memory, FP32 vs quantized, as a Markdown table for the README.

    .venv/bin/python benchmarks/bench_inference.py [FP32.pt] [QUANTIZED.safetensors] \
        [--threads 2] [--repeats 10] [--layers] [--json-out results.json]

Same measurement as `gaqtool bench` (gaqtool.cli.bench): configurations fp32, bf16 autocast,
fake-quant, int8 (compiled quant/dequant) and int8-eager; systems 1 aspirin, 32 aspirins, and 48
aspirins on an 8 A grid (1008 atoms). ``--layers`` adds a per-layer table: every nn.Linear shape
of the model at the batch-of-32 row counts, fp32 addmm vs the int8 kernel, and the weight-storage
choice (int8 transposed view / contiguous int8 copy / packed 4-bit unpacked on every call).
FP32 default: the embedded model if present, else runs/dev.pt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gaqtool.cli.bench import (CONFIGS, _load_pair, bench_systems, cpu_description,
                               run_benchmark)
from gaqtool.data.frames import read_npz
from gaqtool.data.spec import sample_path
from gaqtool.io.checkpoint import default_model_path
from gaqtool.kernels import int8 as k8
from gaqtool.packing import pack_bits, unpack_bits
from gaqtool.quant.modules import QuantizedModule


def markdown_table(data: dict) -> str:
    lines = [f"Energy + forces, median of {data['repeats']} runs ({data['warmup']} warm-up), "
             f"{data['threads']} threads, {data['cpu']}, torch {data['torch']}.",
             f"Quantized model: {data['quantized']}.", "",
             "| system | atoms | edges | config | median ms | speedup vs fp32 | vs fake-quant | peak MB | memory vs fp32 | max dE meV | max dF meV/A |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    sizes = {s["name"]: s for s in data["systems"]}
    for r in data["results"]:
        s = sizes[r["system"]]
        if r["status"] != "ok":
            lines.append(f"| {r['system']} | {s['atoms']} | {s['edges']} | {r['config']} | {r['status']} | | | | | | |")
            continue
        ratio = data["ratios"].get(r["config"], {}).get(r["system"], {})
        lines.append(
            f"| {r['system']} | {s['atoms']} | {s['edges']} | {r['config']} | {r['median_s'] * 1e3:.1f} | "
            f"{ratio.get('speedup', 1.0):.2f}x | "
            + (f"{ratio['speedup_vs_fake_quant']:.2f}x" if "speedup_vs_fake_quant" in ratio else "")
            + f" | {r.get('peak_bytes', 0) / 1e6:.1f} | "
            f"{ratio.get('memory', 1.0):.2f}x | {r['max_abs_energy_error_meV']:.2f} | "
            f"{r['max_abs_force_error_meV_per_A']:.2f} |")
    return "\n".join(lines)


def _median_us(fn, repeats: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def layer_shapes(model, batch) -> dict[tuple[int, int, int], list[str]]:
    """(rows M, K, N) of every quantized nn.Linear call in one forward pass -> module paths."""
    shapes: dict[tuple[int, int, int], list[str]] = {}
    hooks = []
    for path, module in model.named_modules():
        if isinstance(module, QuantizedModule) and module.kind == "nn.Linear":
            def hook(mod, args, path=path):
                x = args[0]
                key = (x.numel() // x.shape[-1], mod.inner.in_features, mod.inner.out_features)
                shapes.setdefault(key, []).append(path)
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    return shapes


def layer_table(quantized, batch) -> str:
    """fp32 addmm vs int8 kernels per layer shape, and the weight-storage variants (microseconds)."""
    compiled = k8.make_kernel(compile=True)
    lines = ["| rows M | K | N | layers | fp32 addmm us | int8 eager us | int8 compiled us | compiled, contiguous (K,N) us | compiled + unpack 4-bit per call us |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for (m, k, n), paths in sorted(layer_shapes(quantized, batch).items()):
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        bias, w_int = torch.randn(n, generator=g), torch.randint(-7, 8, (n, k), generator=g).to(torch.int8)
        scale, packed = torch.rand(n, generator=g), pack_bits(torch.randint(-7, 8, (n, k)).to(torch.int8), 4)
        w_t, w_tc = w_int.t(), w_int.t().contiguous()
        row = [_median_us(lambda: F.linear(x, w, bias)),
               _median_us(lambda: k8.int8_linear(x, w_t, scale, bias)),
               _median_us(lambda: compiled(x, w_t, scale, bias)),
               _median_us(lambda: compiled(x, w_tc, scale, bias)),
               _median_us(lambda: compiled(x, unpack_bits(packed, 4, (n, k)).t(), scale, bias))]
        names = ", ".join(sorted({p.split(".", 2)[-1] for p in paths}))
        lines.append(f"| {m} | {k} | {n} | {names} | " + " | ".join(f"{v:.0f}" for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", nargs="?", type=Path, default=None)
    parser.add_argument("quantized", nargs="*", type=Path, default=[],
                        help="quantized files, one table each (none: gaq w4a8 quantized on the fly)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cluster-molecules", type=int, default=48)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--layers", action="store_true", help="also the per-layer kernel table")
    parser.add_argument("--layers-only", action="store_true", help="only the per-layer kernel table")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    fp32_path = args.fp32 or (default_model_path() if default_model_path().exists() else Path("runs/dev.pt"))
    results = []
    for index, quantized_path in enumerate(args.quantized or [None]):
        fp32, quantized, note = _load_pair(fp32_path, quantized_path)
        systems = bench_systems(read_npz(sample_path("test")), fp32.model.cutoff, args.batch_size,
                                args.cluster_molecules, 8.0)
        if args.layers_only:
            print(f"Per-layer kernels ({note}; rows of the {args.batch_size}-aspirin batch, "
                  f"{torch.get_num_threads()} threads, median microseconds):\n")
            print(layer_table(quantized, systems[1][1]))
            return
        configs = [c for c in args.configs.split(",") if index == 0 or c != "bf16"]
        data = {"cpu": cpu_description(), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "fp32_model": str(fp32.path), "quantized": note,
                "repeats": args.repeats, "warmup": args.warmup,
                "systems": [{"name": n, "atoms": len(b.numbers), "edges": len(b.edge_src),
                             "description": d} for n, b, d in systems]}
        data.update(run_benchmark(fp32.model, quantized, systems, configs, args.repeats,
                                  args.warmup, memory=True,
                                  on_step=lambda step: print(f"[{time.strftime('%H:%M:%S')}] {step}",
                                                             file=sys.stderr, flush=True)))
        results.append(data)
        print(markdown_table(data), flush=True)
        for name, report in data["integer_kernels"].items():
            print(f"\n{name}: {report['backend']}; int8 layers: {', '.join(report['switched']) or 'none'}")
        print()
        if args.layers and index == 0:
            print(f"Per-layer kernels (rows of the {args.batch_size}-aspirin batch, median microseconds):\n")
            print(layer_table(quantized, systems[1][1]) + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
