"""`gaqtool eval`: energy, force and stress errors of a model (FP32 or quantized) on frames.

Labelled frames are compared with their labels. Frames without labels (a crystal file with
positions only, the crystals of the universal set) are compared with the FP32 parent of a
quantized model ("teacher" mode): the parent named by ``--fp32``, or the one the quantized file
records (a named model such as ``sevenn:7net-0``, or a checkpoint found next to the file or in
the working directory whose SHA-256 is the recorded one, or the embedded model).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from gaqtool.cli.app import app
from gaqtool.cli.console import clamped_count, console, log, print_json, progress, warn
from gaqtool.cli.parents import display_name, fp32_reference, recorded_modal
from gaqtool.cli.options import (DeviceOption, E3nnConvolutionOption, ForceModeOverrideOption, JsonOption,
                                 ModalOption, Rmd17DirOption, ThreadsOption, TrustPickleOption, use_threads)
from gaqtool.data.frames import Frames
from gaqtool.data.spec import check_spec, composition_mismatch, default_spec, resolve_data, uncalibrated_elements
from gaqtool.errors import InputError
from gaqtool.io.atomic import atomic_write, check_writable
from gaqtool.report import KINDS, offset_note, reference_mismatch

if TYPE_CHECKING:  # torch-heavy; imported where used, so that --help stays fast
    from gaqtool.io.loading import LoadedModel
    from gaqtool.metrics.accuracy import Predictions

PLOT_FORMATS = ("png", "pdf", "svg")


class Split(str, Enum):
    test = "test"
    train = "train"
    val = "val"


ModelArgument = Annotated[Optional[Path], typer.Argument(
    help="Model: a quantized .safetensors file, a gaqtool checkpoint (.pt), a SevenNet checkpoint "
         "(.pth) or a named model (sevenn:7net-0, sevenn:7net-mf-0 with --modal, sevenn:7net-l3i5). "
         "Default: the embedded aspirin model.", show_default=False)]
FP32Option = Annotated[Optional[Path], typer.Option(
    "--fp32", help="FP32 parent (checkpoint or named model) that frames without labels are compared "
                   "with. Default: the parent the quantized file records (its named model, or its "
                   "checkpoint if found with the recorded SHA-256), or the embedded model.",
    show_default=False)]


def check_elements(loaded: LoadedModel, frames: Frames, data: str) -> None:
    """UnknownElementError (one line) for the first frame with elements the model lacks."""
    from gaqtool.potential import check_species

    for k, numbers in enumerate(frames.numbers):
        check_species(numbers, loaded.model.species, display_name(loaded), f"frame {k} of {data}")


def warn_if_uncalibrated(loaded: LoadedModel, numbers) -> None:
    """One warning when a quantized file meets elements its calibration structures lacked
    (``numbers``: atomic numbers per structure)."""
    gap = uncalibrated_elements(loaded.calibration_elements, numbers)
    if gap:
        warn(f"{display_name(loaded)}: {gap}")


# ------------------------------------------------------------------------------- frame errors

def _labelled(frames: Frames) -> np.ndarray:
    """(F,) bool: frames with energy and force labels (what accuracy_metrics evaluates)."""
    return np.array([bool(np.isfinite(e) and np.all(np.isfinite(f)))
                     for e, f in zip(frames.energies, frames.forces)], dtype=bool)


def _take(pred: Predictions, idx) -> Predictions:
    from gaqtool.metrics.accuracy import Predictions

    idx = [int(i) for i in idx]
    return Predictions(pred.energies[idx], [pred.forces[i] for i in idx],
                       None if pred.stresses is None else [pred.stresses[i] for i in idx])


def per_frame_errors(pred: Predictions, frames: Frames) -> list[dict[str, float]]:
    """Per frame: force MAE over components (meV/A) and |E_pred - E_ref| (meV)."""
    return [{"frame": k,
             "force_mae_mev_a": float(np.abs(f - r).mean() * 1000.0),
             "energy_error_mev": float(abs(e - e_ref) * 1000.0)}
            for k, (f, r, e, e_ref) in enumerate(zip(pred.forces, frames.forces, pred.energies,
                                                      frames.energies))]


def _ranges(indices: list[int]) -> str:
    """'0-15, 18' for [0, ..., 15, 18]."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


def _describe(frames: Frames, indices: list[int]) -> str:
    """'frames 0-15 (16 crystals)' or 'frames 0-7 (3 crystals, 5 molecules)'."""
    crystals = sum(1 for i in indices if np.any(frames.periodic(i)))
    kinds = [f"{n} {name if n != 1 else name[:-1]}" for n, name in
             ((crystals, "crystals"), (len(indices) - crystals, "molecules")) if n]
    return f"frame{'s' if len(indices) != 1 else ''} {_ranges(indices)} ({', '.join(kinds)})"


# ---------------------------------------------------------------------------------------- plot

def _check_plot_path(plot: Optional[Path]) -> None:
    """Fail before any work if --plot cannot be written (format, matplotlib missing)."""
    if plot is None:
        return
    if plot.suffix.lstrip(".").lower() not in PLOT_FORMATS:
        raise InputError(f"--plot '{plot}' has an unsupported extension",
                         hint="use one of: " + ", ".join("." + f for f in PLOT_FORMATS))
    check_writable(plot, "--plot")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed",
                         hint="pip install matplotlib  (or: pip install 'gaqtool[plot]')") from None


def write_parity_plot(path: Path, pred: Predictions, frames: Frames, title: str,
                      metrics: dict[str, float], reference: str = "reference") -> None:
    """Energy (meV, relative to the mean reference; each side's own mean when the energy
    references differ) and force-component (eV/A) parity plots."""
    from matplotlib.figure import Figure  # object API: no global pyplot/backend state

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax_e, ax_f = fig.subplots(1, 2)
    offset = float(np.mean(frames.energies))
    shifted = reference_mismatch(metrics)
    pred_offset = float(np.mean(pred.energies)) if shifted else offset
    ref_e, pred_e = (frames.energies - offset) * 1000.0, (pred.energies - pred_offset) * 1000.0
    ref_f = np.concatenate([f.reshape(-1) for f in frames.forces])
    pred_f = np.concatenate([f.reshape(-1) for f in pred.forces])
    energy_mae = metrics["energy_mae_mev_offset_removed" if shifted else "energy_mae_mev"]
    panels = ((ax_e, ref_e, pred_e, "energy - mean (meV)" if shifted else "energy - mean reference (meV)",
               f"energy{'*' if shifted else ''}: MAE {energy_mae:.3g} meV"),
              (ax_f, ref_f, pred_f, "force component (eV/A)",
               f"forces: MAE {metrics['force_mae_mev_a']:.3g} meV/A"))
    for ax, ref, prd, label, panel_title in panels:
        lo, hi = float(min(ref.min(), prd.min())), float(max(ref.max(), prd.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", linewidth=1)
        ax.scatter(ref, prd, s=4, alpha=0.5, linewidths=0)
        ax.set_xlabel(f"{reference} {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.set_title(panel_title)
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title)
    fmt = path.suffix.lstrip(".").lower()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))


# -------------------------------------------------------------------------------------- render

def _scope_rows(table: Table, scope: dict[str, Any], suffix: str = "") -> None:
    """MAE / RMSE rows of one metrics scope ('*': energy with the mean offset removed)."""
    if reference_mismatch(scope):
        table.add_row(f"energy{suffix}* (meV)", f"{scope['energy_mae_mev_offset_removed']:.4g}", "-")
    else:
        table.add_row(f"energy{suffix} (meV)", f"{scope['energy_mae_mev']:.4g}",
                      f"{scope['energy_rmse_mev']:.4g}")
        table.add_row(f"energy{suffix} (meV/atom)", f"{scope['energy_mae_mev_per_atom']:.4g}", "-")
    table.add_row(f"forces{suffix} (meV/A)", f"{scope['force_mae_mev_a']:.4g}",
                  f"{scope['force_rmse_mev_a']:.4g}")
    if "stress_mae_mev_a3" in scope:
        table.add_row(f"stress{suffix} (meV/A^3)", f"{scope['stress_mae_mev_a3']:.4g}", "-")


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("")
    table.add_column("MAE", justify="right")
    table.add_column("RMSE", justify="right")
    _scope_rows(table, metrics)
    kinds = [k for k in KINDS if k in metrics]
    if len(kinds) > 1:
        for kind in kinds:
            _scope_rows(table, metrics[kind], f" {kind}")
    return table


def _count(n: int) -> str:
    return f"{n} frame{'s' if n != 1 else ''}"


def _render(report: dict[str, Any]) -> None:
    model, m, teacher = report["model"], report["metrics"], report["teacher"]
    console.print(f"model: {model['name']} ({model['label']})", highlight=False)
    for note in report["notes"]:
        console.print(note, highlight=False)
    if m.get("num_labelled"):
        console.print(_metrics_table(f"vs labels, {_count(m['num_labelled'])}", m))
        note = offset_note(m)
        if note:
            console.print(note, highlight=False)
    if teacher:
        t = teacher["metrics"]
        console.print(_metrics_table(f"vs {teacher['role']}, {_count(t['num_frames'])}", t))
    if report["worst"]:
        worst = Table(title=f"{len(report['worst'])} frames with the largest force MAE")
        for name in ("frame", "against", "force MAE (meV/A)", "|energy error| (meV)"):
            worst.add_column(name, justify="right")
        for row in report["worst"]:
            worst.add_row(str(row["frame"]), row["against"], f"{row['force_mae_mev_a']:.4g}",
                          f"{row['energy_error_mev_offset_removed']:.4g}*"
                          if "energy_error_mev_offset_removed" in row else f"{row['energy_error_mev']:.4g}")
        console.print(worst)


# ------------------------------------------------------------------------------------- command

@app.command("eval", short_help="Energy, force and stress errors against labels or FP32.")
def evaluate(
    model: ModelArgument = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Frames: rmd17 (the model's molecule), rmd17:<molecule>, universal (crystals and molecules made by code), or a file (.npz, extxyz, traj, ...; frames without labels are compared with the FP32 parent). Default: rmd17 for a model with a molecule, universal otherwise.", show_default=False)] = None,
    split: Annotated[Split, typer.Option("--split", help="rMD17 split (ignored for files): test (split 01), train or val (950/50 of the train split).")] = Split.test,
    num_frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Use only the first N frames.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Structures per forward pass.")] = 16,
    worst: Annotated[int, typer.Option("--worst", min=0, help="List the K frames with the largest force MAE (with their energy error).")] = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write energy and force parity plots here (.png, .pdf or .svg; needs matplotlib): the labelled frames, or the FP32 parent's values when no frame has labels.")] = None,
    fp32: FP32Option = None,
    force_mode: ForceModeOverrideOption = None,
    modal: ModalOption = None,
    e3nn_convolution: E3nnConvolutionOption = False,
    rmd17_dir: Rmd17DirOption = None,
    trust_pickle: TrustPickleOption = False,
    threads: ThreadsOption = None,
    device: DeviceOption = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Energy, force and stress MAE / RMSE of a model against labels, or against its FP32
    parent on frames without labels."""
    from gaqtool.io.loading import load_model
    from gaqtool.metrics.accuracy import accuracy_metrics, deviation_metrics, predict

    from gaqtool.device import place_model, select_device

    target = select_device(device)  # before any work
    threads = use_threads(threads)
    check_spec(data, "--data")
    _check_plot_path(plot)
    loaded = load_model(model, trust_pickle, force_mode, modal, e3nn_convolution)
    place_model(loaded.model, target)
    spec = data or default_spec(loaded.molecule)
    selection = resolve_data(spec, split.value, rmd17_dir, loaded.molecule)
    frames, note = selection.frames, selection.note
    if num_frames is not None and clamped_count("--frames", num_frames, len(frames), spec) < len(frames):
        frames = frames.subset(range(num_frames))
        note = f"{note}; first {num_frames} used"
    mismatch = composition_mismatch(frames, loaded.molecule)
    if mismatch:
        warn(mismatch)
    check_elements(loaded, frames, spec)
    warn_if_uncalibrated(loaded, frames.numbers)
    labelled = _labelled(frames)
    with_labels = [int(i) for i in np.nonzero(labelled)[0]]
    without = [int(i) for i in np.nonzero(~labelled)[0]]
    parent, how = (None, "")
    if without:
        parent, how = fp32_reference(loaded, fp32, trust_pickle)
        if parent is None and not with_labels:
            raise InputError(f"{spec}: no frame has energy and force labels, and {how}",
                             hint="pass the FP32 parent with --fp32, or use labelled frames"
                             if loaded.kind == "quantized" else
                             "use labelled frames, or compare with another model with --fp32")
        if parent is not None:
            check_elements(parent, frames.subset(without), spec)
    if not json_output:
        log.print(f"[dim]{escape(note)}[/]", highlight=False)
    with progress(json_output) as bar:
        total = len(frames) + (len(without) if parent is not None else 0)
        task = bar.add_task("evaluating", total=total, info=loaded.label)
        pred = predict(loaded.model, frames, batch_size, on_batch=lambda n: bar.update(task, advance=n))
        parent_pred = None
        if parent is not None:
            bar.update(task, info="FP32 parent")
            parent_pred = predict(parent.model, frames.subset(without), batch_size,
                                  on_batch=lambda n: bar.update(task, advance=n))
    metrics = accuracy_metrics(pred, frames)
    notes = []
    if with_labels:
        notes.append(f"compared with labels: {_describe(frames, with_labels)}")
    teacher = None
    if parent is not None:
        sub = frames.subset(without)
        teacher = {"parent": {"name": display_name(parent), "path": str(parent.path),
                              "label": parent.label, "found": how},
                   "frames": without,
                   "metrics": deviation_metrics(_take(pred, without), parent_pred, sub)}
        role = "the FP32 parent" if loaded.kind == "quantized" else "the --fp32 model"
        notes.append(f"compared with {role} {display_name(parent)} (no labels): "
                     f"{_describe(frames, without)}")
        notes.append(f"{role[4:]}: {how}")
        teacher["role"] = role[4:]
    elif without:
        notes.append(f"not evaluated (no labels, no FP32 parent): {_describe(frames, without)}; "
                     f"{how}; --fp32 names a model to compare them with")
    if fp32 is not None and not without:
        notes.append("--fp32 unused: every frame has labels")
    errors = []
    if with_labels:
        labelled_frames = frames.subset(with_labels)
        for i, r in zip(with_labels, per_frame_errors(_take(pred, with_labels), labelled_frames)):
            kind = "crystals" if np.any(frames.periodic(i)) else "molecules"
            scope = metrics.get(kind, metrics)
            if reference_mismatch(scope):  # the model's energy reference differs: remove the mean offset
                signed = (pred.energies[i] - frames.energies[i]) * 1000.0
                r["energy_error_mev_offset_removed"] = float(abs(
                    signed - scope["energy_offset_mev_per_atom"] * frames.num_atoms[i]))
            errors.append(dict(r, frame=i, against="labels"))
    if teacher:
        teacher_frames = frames.subset(without).with_labels(parent_pred.energies, parent_pred.forces,
                                                            parent_pred.stresses)
        errors += [dict(r, frame=i, against="FP32") for i, r in
                   zip(without, per_frame_errors(_take(pred, without), teacher_frames))]
    errors.sort(key=lambda r: r["force_mae_mev_a"], reverse=True)
    report = {"model": {"path": str(loaded.path), "name": display_name(loaded), "kind": loaded.kind,
                        "label": loaded.label, "molecule": loaded.molecule,
                        "source": loaded.info.get("source"),
                        "modal": modal if loaded.kind == "fp32" else recorded_modal(loaded)},
              "data": {"spec": spec, "split": split.value, "note": note},
              "metrics": metrics, "teacher": teacher,
              "reference": {"labels": with_labels, "fp32_parent": without if teacher else [],
                            "none": [] if teacher else without},
              "notes": notes, "worst": errors[:worst]}
    if plot is not None:
        title = f"{display_name(loaded)} ({loaded.label})"
        if with_labels:
            write_parity_plot(plot, _take(pred, with_labels), frames.subset(with_labels), title, metrics)
        else:
            write_parity_plot(plot, _take(pred, without), teacher_frames, title + " vs FP32 parent",
                              teacher["metrics"], reference="FP32")
        report["plot"] = str(plot)
    if json_output:
        print_json(report)
        return
    _render(report)
    if plot is not None:
        log.print(f"wrote {plot}", highlight=False)
