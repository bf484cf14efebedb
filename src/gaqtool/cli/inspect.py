"""`gaqtool inspect FILE`: header, metadata and per-tensor bits and bytes of a quantized file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gaqtool.cli.app import app
from gaqtool.cli.console import console, print_json
from gaqtool.cli.options import JsonOption
from gaqtool.quant.bitmap import bit_map
from gaqtool.report import bit_map_line, bits_name, budget_lines, format_bytes, promotions_table, weights_cell


def tensor_rows(qfile) -> list[dict]:
    """One row per stored tensor: name, dtype, shape, bytes and bits per stored value."""
    bits_of = {path: entry.get("weight_bits") for path, entry in qfile.plan["entries"].items()}
    rows = []
    for name, tensor in sorted(qfile.tensors.items()):
        module, _, leaf = name.rpartition(".")
        bits = tensor.element_size() * 8
        if leaf.endswith("_packed"):
            bits = bits_of.get(module) or bits
        rows.append({"name": name, "dtype": str(tensor.dtype).replace("torch.", ""),
                     "shape": list(tensor.shape), "bytes": tensor.numel() * tensor.element_size(),
                     "bits": bits})
    return rows


def module_entries(qfile) -> dict[str, dict]:
    """The file's plan entries with ``num_weights`` filled in from the ``*_shape`` tensors."""
    entries = {}
    for path, entry in qfile.plan["entries"].items():
        shapes = [t for name, t in qfile.tensors.items()
                  if name.startswith(f"{path}.") and name.endswith("_shape") and "." not in name[len(path) + 1:]]
        entry = dict(entry)
        if shapes and "num_weights" not in entry:
            entry["num_weights"] = int(sum(int(t.prod()) for t in shapes))
        entries[path] = entry
    return entries


def model_summary(qfile) -> dict:
    """Architecture, name, fidelity and molecule of the stored model, and the FP32 source it
    was quantized from (as the file's report records it)."""
    config = qfile.model_config
    source = dict((getattr(qfile, "report", None) or {}).get("source") or {})
    calibration = dict((getattr(qfile, "report", None) or {}).get("calibration") or {})
    return {"architecture": config.get("architecture", "gaqtool"), "name": config.get("name"),
            "modal": config.get("modal", source.get("modal")), "molecule": config.get("molecule"),
            "source": source or None, "calibration": calibration or None}


def _modules_table(modules: dict[str, dict]) -> Table:
    table = Table(title="modules (inputs: bits of each quantized input's grid)")
    for col in ("module", "kind", "weights", "inputs", "note"):
        table.add_column(col, overflow="fold")
    for module, entry in modules.items():
        note = entry.get("reason", "")
        if entry.get("rounding"):
            note = f"{entry['rounding']} rounding" + (f"; {note}" if note else "")
        inputs = ", ".join(bits_name(b, "a") for b in entry.get("input_bits") or [] if b is not None) or "-"
        table.add_row(module, entry.get("kind", ""), weights_cell(entry), inputs, note)
    return table


@app.command(short_help="Header, modules and tensors of a quantized file.")
def inspect(
    path: Annotated[Path, typer.Argument(help="Quantized .safetensors file written by `gaqtool quantize`.")],
    tensors: Annotated[bool, typer.Option("--tensors/--no-tensors", help="List every tensor.")] = True,
    modules: Annotated[bool, typer.Option("--modules/--no-modules", help="List every module with its weight bits.")] = True,
    json_output: JsonOption = False,
) -> None:
    """Show the header, metadata, source model, per-module bits and per-tensor bits and bytes
    of a quantized file."""
    from gaqtool.io.safetensors_io import read_header

    qfile = read_header(path)
    rows = tensor_rows(qfile)
    model = model_summary(qfile)
    summary = {
        "path": str(path), "file_bytes": path.stat().st_size,
        "tensor_bytes": sum(r["bytes"] for r in rows),
        "header_bytes": path.stat().st_size - sum(r["bytes"] for r in rows),
        "metadata": {k: (json.loads(v) if k in ("gaqtool.model_config", "gaqtool.quant_config") else v)
                     for k, v in qfile.raw_metadata.items() if k not in ("gaqtool.plan", "gaqtool.report")},
        "model": model,
        "modules": module_entries(qfile),
        "tensors": rows,
    }
    summary["bit_map"] = bit_map(summary["modules"]).to_dict()
    if json_output:
        print_json(summary)
        return
    config = qfile.quant_config
    console.print(f"[bold]{path}[/]: gaqtool format {qfile.raw_metadata['gaqtool.format_version']}, "
                  f"{qfile.raw_metadata.get('gaqtool.writer', '?')}, {format_bytes(summary['file_bytes'])} "
                  f"({format_bytes(summary['tensor_bytes'])} tensors, "
                  f"{format_bytes(summary['header_bytes'])} header)", highlight=False)
    console.print(f"method {config.method.value} {config.bits_label}, group size {config.group_size or 'per-channel'}, "
                  f"weights {config.weight_clip.value}-clipped, {config.weight_rounding.value} rounding, "
                  f"observer {config.observer.value}, directions {config.direction_mode.value}",
                  highlight=False)
    source = model["source"] or {}
    described = ", ".join(part for part in (
        f"model {model['architecture']}" + (f" ({model['name']})" if model["name"] else ""),
        f"modal {model['modal']}" if model["modal"] else "",
        f"molecule {model['molecule']}" if model["molecule"] else "no molecule (universal)",
        f"quantized from {source.get('name') or source.get('path') or '?'}") if part)
    console.print(f"{described}; source sha256 "
                  f"{qfile.raw_metadata.get('gaqtool.source_sha256', '?')[:16]}…", highlight=False)
    calibration = model["calibration"] or {}
    if calibration:
        elements = calibration.get("elements")
        console.print(escape(f"calibration: {calibration.get('frames', '?')} structures "
                             f"({calibration.get('data', '?')})"
                             + (f"; elements {', '.join(elements)}" if elements else "")), highlight=False)
    console.print(bit_map_line(summary["bit_map"]), highlight=False)
    budget = qfile.report.get("budget")
    if budget:
        for line in budget_lines(budget):
            console.print(line, highlight=False)
    if modules:
        if budget and budget.get("promotions"):
            console.print(promotions_table(budget))
        console.print(_modules_table(summary["modules"]))
    if tensors:
        table = Table(title="tensors")
        for col, justify in (("name", "left"), ("dtype", "left"), ("shape", "left"), ("bits", "right"), ("bytes", "right")):
            table.add_column(col, justify=justify, overflow="fold")  # names wrap, never cut
        for r in rows:
            table.add_row(r["name"], r["dtype"], "x".join(map(str, r["shape"])) or "scalar", str(r["bits"]),
                          str(r["bytes"]))
        console.print(table)
