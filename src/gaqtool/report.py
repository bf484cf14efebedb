"""Render quantization / evaluation reports (plain dicts) as Rich tables. Computes nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_quantize_report", "format_bytes"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def render_quantize_report(report: dict[str, Any], console: Console, show_modules: bool = False) -> None:
    """Accuracy, LEE and size of a quantized model next to its FP32 parent."""
    acc, lee, size = report["accuracy"], report["lee"], report["size"]
    table = Table(title=f"{report['method']} {report['bits']} vs FP32 ({acc['fp32']['num_frames']} held-out frames)")
    table.add_column("metric")
    table.add_column("FP32", justify="right")
    table.add_column("quantized", justify="right")
    table.add_column("ratio", justify="right")
    for label, key, src in (("energy MAE (meV)", "energy_mae_mev", acc),
                            ("force MAE (meV/A)", "force_mae_mev_a", acc),
                            ("LEE force mean (meV/A)", "force_mean_mev_a", lee),
                            ("LEE force max (meV/A)", "force_max_mev_a", lee),
                            ("LEE energy mean (meV)", "energy_mean_mev", lee)):
        a, b = src["fp32"][key], src["quantized"][key]
        table.add_row(label, f"{a:.4g}", f"{b:.4g}", _ratio(b, a))
    table.add_row("model file", format_bytes(size["fp32_checkpoint_bytes"]),
                  format_bytes(size.get("quantized_file_bytes", size["quantized_tensor_bytes"])),
                  f"{size.get('file_ratio', 0):.2f}x smaller" if size.get("file_ratio") else "")
    table.add_row("tensor bytes", format_bytes(size["fp32_tensor_bytes"]),
                  format_bytes(size["quantized_tensor_bytes"]), f"{size['tensor_ratio']:.2f}x smaller")
    console.print(table)
    lee_info = lee["fp32"]
    console.print(f"LEE: {lee_info['num_frames']} frames x {lee_info['num_rotations']} Haar-random rotations "
                  f"(seed {lee_info['seed']}); FP32 column is the float32 floor.", highlight=False)
    modules = report["modules"]
    fp32 = [m for m in modules if m["status"] == "fp32"]
    quantized = [m for m in modules if m["status"] == "quantized"]
    console.print(f"{len(quantized)} modules quantized, {len(fp32)} kept FP32; force mode: "
                  f"{report['force_mode']}", highlight=False)
    if show_modules or fp32:
        mt = Table(title="modules" if show_modules else "modules kept in FP32")
        for col in ("module", "kind", "weights", "inputs", "note"):
            mt.add_column(col)
        for m in (modules if show_modules else fp32):
            bits = f"int{m['weight_bits']} x {m.get('num_weights', 0)}" if m.get("weight_bits") else "fp32"
            inputs = ", ".join(i for i in (m.get("inputs") or []) if i) or "-"
            mt.add_row(m["path"], m["kind"], bits, inputs, m.get("reason", ""))
        console.print(mt)
