"""Render quantization / evaluation reports (plain dicts) as Rich tables. Computes nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_quantize_report", "format_bytes", "bit_map_line", "budget_lines", "promotions_table"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


# A mean energy error above this (meV/atom) means the model and the labels use different energy
# references (e.g. a universal model against rMD17's DFT totals): tables then show the energy
# MAE with that mean offset removed, marked with '*'.
REFERENCE_MISMATCH_MEV_PER_ATOM = 100.0


KINDS = ("crystals", "molecules")
"""Per-kind breakdowns that metrics dicts carry for mixed sets (``gaqtool.metrics.accuracy``)."""


def reference_mismatch(scope: dict[str, Any]) -> bool:
    """True when a metrics scope's mean energy error per atom says the model's energy reference
    differs from the labels' (its '*' rows then show the offset-removed MAE)."""
    return abs(scope.get("energy_offset_mev_per_atom", 0.0)) > REFERENCE_MISMATCH_MEV_PER_ATOM


def offset_note(metrics: dict[str, Any], whose: str = "") -> str | None:
    """A footnote for '*' energy rows of ``metrics`` (one model's accuracy dict), or None."""
    for scope in (metrics, *(metrics[k] for k in KINDS if k in metrics)):
        if reference_mismatch(scope):
            return (f"*: after removing the mean energy offset "
                    f"({scope['energy_offset_mev_per_atom'] / 1000:.3g} eV/atom{whose}): the "
                    "model's energy reference differs from the labels'.")
    return None


def _label_rows(acc: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(label, FP32, quantized) rows of errors against labels, per kind for mixed sets."""
    fp32, quant = acc["fp32"], acc["quantized"]
    if not fp32.get("num_labelled", fp32.get("num_frames")) or "force_mae_mev_a" not in fp32:
        return []
    rows = []
    scopes = [(k, f" {k}") for k in KINDS if k in fp32] or [(None, "")]
    for scope, suffix in scopes:
        a, b = (fp32[scope], quant[scope]) if scope else (fp32, quant)
        if reference_mismatch(a):
            rows.append((f"energy MAE{suffix}* (meV)", a["energy_mae_mev_offset_removed"],
                         b["energy_mae_mev_offset_removed"]))
        else:
            rows.append((f"energy MAE{suffix} (meV)", a["energy_mae_mev"], b["energy_mae_mev"]))
        rows.append((f"force MAE{suffix} (meV/A)", a["force_mae_mev_a"], b["force_mae_mev_a"]))
        if "stress_mae_mev_a3" in a:
            rows.append((f"stress MAE{suffix} (meV/A3)", a["stress_mae_mev_a3"], b["stress_mae_mev_a3"]))
    return rows


def _deviation_rows(deviation: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, value) rows of the quantized model's deviation from FP32, per kind if mixed."""
    rows = []
    scopes = [(k, f" {k}") for k in KINDS if k in deviation] or [(None, "")]
    for scope, suffix in scopes:
        d = deviation[scope] if scope else deviation
        rows.append((f"|dE|{suffix} (meV/atom)", d["energy_mae_mev_per_atom"]))
        rows.append((f"|dF|{suffix} (meV/A)", d["force_mae_mev_a"]))
        if "stress_mae_mev_a3" in d:
            rows.append((f"|dS|{suffix} (meV/A3)", d["stress_mae_mev_a3"]))
    return rows


def unhandled_parameters(report: dict[str, Any], modules: list[dict[str, Any]]) -> list[str]:
    """State-dict names of the FP32 parameters of ``modules`` (fp32 entries without a handler),
    e.g. ``layers.0.log_temperature``: the module itself is otherwise quantized."""
    stored = report.get("unquantized_parameters", {})
    names = [name for m in modules for name, reason in stored.items()
             if name.startswith(m["path"] + ".") and reason == m.get("reason")]
    return names or [m["path"] for m in modules]


def render_quantize_report(report: dict[str, Any], console: Console, show_modules: bool = False) -> None:
    """Accuracy, deviation from FP32, LEE and size of a quantized model next to its parent."""
    acc, lee, size = report["accuracy"], report["lee"], report["size"]
    frames = acc["fp32"]["num_frames"]
    table = Table(title=f"{report['method']} {report['bits']} vs FP32 ({frames} held-out structures)")
    table.add_column("metric")
    table.add_column("FP32", justify="right")
    table.add_column("quantized", justify="right")
    table.add_column("ratio", justify="right")
    for label, a, b in _label_rows(acc):
        table.add_row(label, f"{a:.4g}", f"{b:.4g}", _ratio(b, a))
    for label, value in _deviation_rows(report.get("deviation", {})) if report.get("deviation") else []:
        table.add_row(label, "0", f"{value:.4g}", "")
    for label, key in (("LEE force mean (meV/A)", "force_mean_mev_a"),
                       ("LEE force max (meV/A)", "force_max_mev_a"),
                       ("LEE energy mean (meV)", "energy_mean_mev")):
        a, b = lee["fp32"][key], lee["quantized"][key]
        table.add_row(label, f"{a:.4g}", f"{b:.4g}", _ratio(b, a))
    table.add_row("model file", format_bytes(size["fp32_checkpoint_bytes"]),
                  format_bytes(size.get("quantized_file_bytes", size["quantized_tensor_bytes"])),
                  f"{size.get('file_ratio', 0):.2f}x" if size.get("file_ratio") else "")
    table.add_row("tensor bytes", format_bytes(size["fp32_tensor_bytes"]),
                  format_bytes(size["quantized_tensor_bytes"]), f"{size['tensor_ratio']:.2f}x")
    console.print(table)
    note = offset_note(acc["fp32"], " for FP32")
    if note:
        console.print(note, highlight=False)
    labelled = acc["fp32"].get("num_labelled", frames)
    if labelled < frames:
        console.print(f"{frames - labelled} of {frames} structures have no labels: they enter "
                      "only the |dE|, |dF|, |dS| rows (deviation from the FP32 parent, teacher "
                      "mode).", highlight=False)
    lee_info = lee["fp32"]
    console.print(f"LEE: {lee_info['num_frames']} frames x {lee_info['num_rotations']} Haar-random rotations "
                  f"(seed {lee_info['seed']}); FP32 column is the float32 floor.", highlight=False)
    modules = report["modules"]
    fp32 = [m for m in modules if m["status"] == "fp32"]
    chosen = [m for m in fp32 if m.get("reason", "").startswith("kept FP32")]
    unhandled = [m for m in fp32 if m not in chosen]
    quantized = [m for m in modules if m["status"] == "quantized"]
    wide = sorted({m["weight_bits"] for m in quantized if m.get("weight_bits")})
    kept = f"{len(chosen)} module{'s' if len(chosen) != 1 else ''} kept FP32" + (
        f" ({', '.join(m['path'] for m in chosen)})" if chosen else "")
    console.print(f"{len(quantized)} modules quantized (weight bits: "
                  f"{', '.join(bits_name(b, '') for b in wide) or '-'}), {kept}.", highlight=False)
    if unhandled and not show_modules:
        console.print(f"FP32 parameters of modules without a quantization handler: "
                      f"{', '.join(unhandled_parameters(report, unhandled))}.", highlight=False)
    console.print(f"force mode {report['force_mode']}.", highlight=False)
    if report.get("bit_map"):
        console.print(bit_map_line(report["bit_map"]), highlight=False)
    if report.get("budget"):
        for line in budget_lines(report["budget"]):
            console.print(line, highlight=False)
        if report["budget"]["promotions"]:
            console.print(promotions_table(report["budget"]))
    rows = modules if show_modules else chosen
    if rows:
        mt = Table(title="modules" if show_modules else "modules kept in FP32")
        for col in ("module", "weights", "inputs", "note"):
            mt.add_column(col, overflow="fold")
        for m in rows:
            bits = weights_cell(m)
            inputs = ", ".join(f"{i} @{bits_name(b, 'a')}" for i, b in
                               zip(m.get("inputs") or [], m.get("input_bits") or [None] * 9) if i) or "-"
            mt.add_row(f"{m['path']}\n[dim]{m['kind']}[/]", bits, inputs, m.get("reason", ""))
        console.print(mt)


def bits_name(bits: int | None, prefix: str) -> str:
    """32 -> 'fp32', 8 -> 'int8' (weights, prefix 'int') or 'a8' (activations, prefix 'a')."""
    if bits is None:
        return "-"
    return "fp32" if int(bits) == 32 else f"{prefix}{bits}"


def weights_cell(entry: dict[str, Any]) -> str:
    """A module's weights for tables: 'int4 x 3072', 'fp32 x 512', 'fp32' or '-'."""
    count = entry.get("num_weights")
    if entry.get("weight_bits"):
        return bits_name(entry["weight_bits"], "int") + (f" x {count}" if count else "")
    if entry.get("status") == "fp32":
        return "fp32" + (f" x {count}" if count else "")
    return "-"


def bit_map_line(bit_map: dict[str, Any]) -> str:
    """'bit map: weights 4.6 bits on average (int4 x 18, ...); activations 8.8 bits ...'."""
    def histogram(counts: dict, prefix: str) -> str:
        return ", ".join(f"{bits_name(int(b), prefix)} x {n}" for b, n in counts.items())

    weights = bit_map.get("average_weight_bits")
    acts = bit_map.get("average_activation_bits")
    text = "bit map: weights " + (f"{weights:.2f} bits on average" if weights else "-")
    text += f" ({histogram(bit_map.get('weight_histogram', {}), 'int')} modules)"
    if acts:
        grids = sum(bit_map.get("activation_histogram", {}).values())
        text += (f"; activations {acts:.2f} bits on average over {grids} grids "
                 f"({histogram(bit_map['activation_histogram'], 'a')})")
    return text


def budget_lines(budget: dict[str, Any]) -> list[str]:
    """What the error budget asked, where the search started and what the chosen map reached
    on validation and test."""
    from gaqtool.quant.budget import describe_check

    checks, limits = budget["validation"], budget["max_error"]
    lines = [f"error budget: {budget['describe']}", f"  validation: {budget.get('validation_data', '?')}"]
    for key, label in (("start", "start"), ("ceiling_w8a16", "W8A16"), ("chosen", "chosen")):
        if key in checks:
            lines.append(f"  {label} on validation: {describe_check(limits, checks[key])}")
    if budget.get("test"):
        lines.append(f"  chosen on test: {describe_check(limits, budget['test'])}")
    sensitivity = budget["sensitivity"]
    lines.append(f"  {len(budget['promotions'])} promotions; sensitivity: {sensitivity['passes']} "
                 f"passes on {sensitivity['frames']} calibration frames; "
                 f"{sensitivity.get('validation_passes', 0)} validation passes")
    return lines


def promotions_table(budget: dict[str, Any]) -> Table:
    """One row per promotion: what was widened, bits, extra bytes and the share of the start's
    estimated error it removed (per quantity over budget when it was chosen)."""
    table = Table(title="promotions", caption="+bytes: file (weights) or activations of a mean "
                  "calibration structure (grids); error share: of the start's estimated error")
    for col, justify in (("#", "right"), ("module or grid", "left"), ("bits", "left"),
                         ("+bytes", "right"), ("error share", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for k, p in enumerate(budget["promotions"], 1):
        prefix = "a" if ".input_quantizers." in p["target"] else "int"
        name = p["target"].replace(".input_quantizers.", " input ")
        share = ", ".join(f"{q[0].upper()} {100 * v:.1f}%" for q, v in p["error_share"].items())
        table.add_row(str(k), name, f"{bits_name(p['from_bits'], prefix)}->{bits_name(p['to_bits'], prefix)}",
                      f"{p['extra_bytes']:.0f}", share)
    return table
