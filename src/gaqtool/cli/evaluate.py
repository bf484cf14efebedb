"""`gaqtool eval`: energy and force errors of a model (FP32 or quantized) on reference frames."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.table import Table

from gaqtool.cli.app import app
from gaqtool.cli.console import console, print_json, progress
from gaqtool.cli.options import ForceModeOverrideOption, JsonOption, Rmd17DirOption, ThreadsOption, TrustPickleOption
from gaqtool.data.frames import Frames
from gaqtool.data.spec import resolve_data
from gaqtool.errors import InputError
from gaqtool.io.atomic import atomic_write
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import Predictions, accuracy_metrics, predict

PLOT_FORMATS = ("png", "pdf", "svg")


class Split(str, Enum):
    test = "test"
    train = "train"
    val = "val"


ModelArgument = Annotated[Optional[Path], typer.Argument(
    help="FP32 checkpoint (.pt) or quantized .safetensors file. Default: the embedded model.",
    show_default=False)]


def per_frame_errors(pred: Predictions, frames: Frames) -> list[dict[str, float]]:
    """Per frame: force MAE over components (meV/A) and |E_pred - E_ref| (meV)."""
    return [{"frame": k,
             "force_mae_mev_a": float(np.abs(f - r).mean() * 1000.0),
             "energy_error_mev": float(abs(e - e_ref) * 1000.0)}
            for k, (f, r, e, e_ref) in enumerate(zip(pred.forces, frames.forces, pred.energies,
                                                      frames.energies))]


def _check_plot_path(plot: Optional[Path]) -> None:
    """Fail before any work if --plot cannot be written (format, matplotlib missing)."""
    if plot is None:
        return
    if plot.suffix.lstrip(".").lower() not in PLOT_FORMATS:
        raise InputError(f"--plot '{plot}' has an unsupported extension",
                         hint="use one of: " + ", ".join("." + f for f in PLOT_FORMATS))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed",
                         hint="pip install matplotlib  (or: pip install 'gaqtool[plot]')") from None


def write_parity_plot(path: Path, pred: Predictions, frames: Frames, title: str,
                      metrics: dict[str, float]) -> None:
    """Energy (meV, relative to the mean reference) and force-component (eV/A) parity plots."""
    from matplotlib.figure import Figure  # object API: no global pyplot/backend state

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax_e, ax_f = fig.subplots(1, 2)
    offset = float(np.mean(frames.energies))
    ref_e, pred_e = (frames.energies - offset) * 1000.0, (pred.energies - offset) * 1000.0
    ref_f = np.concatenate([f.reshape(-1) for f in frames.forces])
    pred_f = np.concatenate([f.reshape(-1) for f in pred.forces])
    panels = ((ax_e, ref_e, pred_e, "energy - mean reference (meV)",
               f"energy: MAE {metrics['energy_mae_mev']:.3g} meV"),
              (ax_f, ref_f, pred_f, "force component (eV/A)",
               f"forces: MAE {metrics['force_mae_mev_a']:.3g} meV/A"))
    for ax, ref, prd, label, panel_title in panels:
        lo, hi = float(min(ref.min(), prd.min())), float(max(ref.max(), prd.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", linewidth=1)
        ax.scatter(ref, prd, s=4, alpha=0.5, linewidths=0)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.set_title(panel_title)
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title)
    fmt = path.suffix.lstrip(".").lower()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))


def _render(report: dict[str, Any]) -> None:
    m = report["metrics"]
    console.print(f"model: {report['model']['path']} ({report['model']['label']})", highlight=False)
    table = Table(title=f"errors on {m['num_frames']} frames")
    table.add_column("")
    table.add_column("MAE", justify="right")
    table.add_column("RMSE", justify="right")
    table.add_row("energy (meV)", f"{m['energy_mae_mev']:.4g}", f"{m['energy_rmse_mev']:.4g}")
    table.add_row("forces (meV/A)", f"{m['force_mae_mev_a']:.4g}", f"{m['force_rmse_mev_a']:.4g}")
    console.print(table)
    if report["worst"]:
        worst = Table(title=f"{len(report['worst'])} frames with the largest force MAE")
        for name in ("frame", "force MAE (meV/A)", "|energy error| (meV)"):
            worst.add_column(name, justify="right")
        for row in report["worst"]:
            worst.add_row(str(row["frame"]), f"{row['force_mae_mev_a']:.4g}",
                          f"{row['energy_error_mev']:.4g}")
        console.print(worst)


@app.command("eval")
def evaluate(
    model: ModelArgument = None,
    data: Annotated[str, typer.Option("--data", help="Frames: rmd17 (the model's molecule), rmd17:<molecule>, or a file (.npz, extxyz, ...).")] = "rmd17",
    split: Annotated[Split, typer.Option("--split", help="rMD17 split (ignored for files): test (split 01), train or val (950/50 of the train split).")] = Split.test,
    num_frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Use only the first N frames.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Molecules per forward pass.")] = 16,
    worst: Annotated[int, typer.Option("--worst", min=0, help="List the K frames with the largest force MAE (with their energy error).")] = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write energy and force parity plots here (.png, .pdf or .svg; needs matplotlib).")] = None,
    force_mode: ForceModeOverrideOption = None,
    rmd17_dir: Rmd17DirOption = None,
    trust_pickle: TrustPickleOption = False,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Energy and force MAE / RMSE of a model against reference frames."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    _check_plot_path(plot)
    loaded = load_model(model, trust_pickle, force_mode)
    selection = resolve_data(data, split.value, rmd17_dir, loaded.molecule)
    frames, note = selection.frames, selection.note
    if num_frames is not None and num_frames < len(frames):
        frames = frames.subset(range(num_frames))
        note = f"{note}; first {num_frames} used"
    if not json_output:
        console.print(f"[dim]{note}[/]", highlight=False)
    with progress(json_output) as bar:
        task = bar.add_task("evaluating", total=len(frames), info=loaded.label)
        try:
            pred = predict(loaded.model, frames, batch_size, on_batch=lambda n: bar.update(task, advance=n))
        except ValueError as exc:  # elements outside the model's species
            raise InputError(f"cannot evaluate {loaded.path} on {data}: {exc}",
                             hint="use frames of the molecule the model was trained on") from None
    metrics = accuracy_metrics(pred, frames)
    errors = sorted(per_frame_errors(pred, frames), key=lambda r: r["force_mae_mev_a"], reverse=True)
    report = {"model": {"path": str(loaded.path), "kind": loaded.kind, "label": loaded.label,
                        "molecule": loaded.molecule},
              "data": {"spec": data, "split": split.value, "note": note},
              "metrics": metrics, "worst": errors[:worst]}
    if plot is not None:
        write_parity_plot(plot, pred, frames, f"{loaded.path.name} ({loaded.label})", metrics)
        report["plot"] = str(plot)
    if json_output:
        print_json(report)
        return
    _render(report)
    if plot is not None:
        console.print(f"wrote {plot}", highlight=False)
