"""`gaqtool lee-check`: local equivariance error of models next to their FP32 floor; no math here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from gaqtool.cli.app import app
from gaqtool.cli.console import clamped_count, console, log, print_json, progress, warn
from gaqtool.cli.evaluate import check_elements, warn_if_uncalibrated
from gaqtool.cli.parents import display_name, explicit_parent, recorded_parent
from gaqtool.cli.options import (E3nnConvolutionOption, ForceModeOverrideOption, JsonOption, ModalOption,
                                 Rmd17DirOption, SeedOption, ThreadsOption, TrustPickleOption, use_threads)
from gaqtool.data.frames import Frames
from gaqtool.data.spec import check_spec, composition_mismatch, default_spec, resolve_data

if TYPE_CHECKING:  # torch-heavy; imported where used, so that --help stays fast
    from gaqtool.io.loading import LoadedModel

ModelsArgument = Annotated[Optional[List[Path]], typer.Argument(
    help="Models: quantized .safetensors files, gaqtool checkpoints (.pt), SevenNet checkpoints "
         "(.pth) or named models (sevenn:7net-0, ...). Default: the embedded FP32 model beside "
         "naive and GAQ W4A8 quantized from it on the fly.",
    show_default=False)]


def load_models(sources: list[Optional[Path]], trust_pickle: bool, force_mode, modal: str | None,
                e3nn_convolution: bool = False) -> list[LoadedModel]:
    """Load every source; ``--modal`` goes to the FP32 sources (a quantized file keeps its own),
    or to all of them when there is none, so that load_model refuses it."""
    from gaqtool.io.loading import load_model

    takes_modal = [p is None or Path(p).suffix != ".safetensors" for p in sources]
    return [load_model(p, trust_pickle, force_mode, modal if takes or not any(takes_modal) else None,
                       e3nn_convolution) for p, takes in zip(sources, takes_modal)]


DEFAULT_FRAMES = 8
ON_THE_FLY_BITS = "w4a8"
ON_THE_FLY_CALIB_FRAMES = 8


def _on_the_fly(force_mode, rmd17_dir, notes: list[str]) -> tuple[list[LoadedModel], dict[str, LoadedModel]]:
    """No model given: the embedded FP32 model, and naive and GAQ W4A8 quantized from it now
    (calibration on fewer frames than ``quantize``'s, so that it stays quick; naive rounds its
    weights to nearest, as the plain baseline does); each quantized model's parent is the FP32
    one."""
    from gaqtool.config import ForceMode, Method, QuantConfig, WeightRounding
    from gaqtool.io.loading import LoadedModel, load_model
    from gaqtool.workflow import quantize_loaded

    fp32 = load_model(None)
    calib = resolve_data(default_spec(fp32.molecule), "train", rmd17_dir, fp32.molecule)
    mode = ForceMode(force_mode) if force_mode is not None else ForceMode.STE
    models = [fp32]
    for method, rounding in ((Method.NAIVE, WeightRounding.NEAREST), (Method.GAQ, WeightRounding.GPTQ)):
        config = QuantConfig.from_preset(ON_THE_FLY_BITS, method=method, calib_frames=ON_THE_FLY_CALIB_FRAMES,
                                         weight_rounding=rounding, force_mode=mode)
        quantized, _ = quantize_loaded(fp32.model, config, calib.frames)
        label = f"{config.method.value} {config.bits_label}, {mode.value} forces"
        models.append(LoadedModel(quantized, Path(f"{config.method.value}-{config.bits_label}"), "quantized",
                                  label, fp32.molecule, {"on_the_fly": True}))
    notes.append(f"no model given: the embedded FP32 model beside naive (min-max, rounding to "
                 f"nearest) and GAQ (default settings) {ON_THE_FLY_BITS}, quantized from it on the fly "
                 f"with calibration on the first {ON_THE_FLY_CALIB_FRAMES} frames of "
                 f"{calib.description}; pass files written by `gaqtool quantize` to check those")
    return models, {str(m.path): fp32 for m in models[1:]}


def _find_parents(models: list[LoadedModel], fp32: Optional[Path], trust_pickle: bool
                  ) -> tuple[dict[str, LoadedModel], list[str]]:
    """Map the path of each quantized model to its FP32 parent; notes on what was assumed.

    Parent: ``--fp32`` if given; else an FP32 model among the arguments, or the embedded model,
    whose SHA-256 equals the quantized file's ``gaqtool.source_sha256``; else the parent the
    file records (a named model such as ``sevenn:7net-0``, or its checkpoint found by name with
    the recorded SHA-256).
    """
    from gaqtool.io.checkpoint import default_model_path
    from gaqtool.io.loading import file_sha256, load_model

    notes: list[str] = []
    quantized = [m for m in models if m.kind == "quantized"]
    if fp32 is not None:
        parent, mismatched = explicit_parent(fp32, quantized, trust_pickle)
        notes += [f"{note}; its floor is --fp32 anyway" for note in mismatched]
        return {str(m.path): parent for m in quantized}, notes
    candidates = {file_sha256(m.path): m for m in models if m.kind == "fp32"}
    embedded = default_model_path()
    embedded_sha = file_sha256(embedded) if quantized and embedded.is_file() else None
    parents: dict[str, LoadedModel] = {}
    recorded: dict[str, LoadedModel] = {}
    for m in quantized:
        source = m.info.get("source_sha256")
        if source and source == embedded_sha and source not in candidates:
            candidates[source] = load_model(embedded)
        if source in candidates:
            parents[str(m.path)] = candidates[source]
            continue
        parent, how = recorded_parent(m, trust_pickle, recorded)
        if parent is not None:
            parents[str(m.path)] = parent
            notes.append(f"FP32 floor of {m.path.name}: {how}")
        else:
            notes.append(f"{how}: pass it with --fp32 to see the floor")
    return parents, notes


def _rows(models: list[LoadedModel], parents: dict[str, LoadedModel]) -> list[dict[str, Any]]:
    """One row per model to measure: argument models in order, each missing parent before its child."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    argument_paths = {str(m.path) for m in models}
    for m in models:
        parent = parents.get(str(m.path))
        if parent is not None and str(parent.path) not in argument_paths and str(parent.path) not in seen:
            rows.append({"model": parent, "role": "fp32 floor", "argument": False})
            seen.add(str(parent.path))
        if str(m.path) not in seen:
            rows.append({"model": m, "role": m.kind, "argument": True,
                         "parent": str(parent.path) if parent is not None else None})
            seen.add(str(m.path))
    return rows


def _frames_for(molecule: str | None, data: str, rmd17_dir, num_frames: int, cache: dict,
                notes: list[str]) -> tuple[Frames, Frames]:
    """(the first ``num_frames`` of ``data``, all of them) for a model fitted to ``molecule``."""
    key = molecule if data.startswith("rmd17") else data
    if key not in cache:
        selection = resolve_data(data, "test", rmd17_dir, molecule)
        count = clamped_count("--frames", num_frames, len(selection.frames), data, DEFAULT_FRAMES)
        first = selection.frames.subset(range(count))
        mismatch = composition_mismatch(first, molecule)
        if mismatch:
            warn(mismatch)
        cache[key] = (first, selection.frames)
        notes.append(f"{selection.note}; first {len(first)} used")
    return cache[key]


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}x" if x >= 100 else f"{x:.3g}x"


_METRICS = (("F mean (meV/A)", "force_mean_mev_a"), ("F max (meV/A)", "force_max_mev_a"),
            ("F mean / mean |F|", "force_relative"), ("E mean (meV)", "energy_mean_mev"),
            ("E max (meV)", "energy_max_mev"))


def _render(rows: list[dict[str, Any]], top: int, localize: bool) -> None:
    """Metrics as rows, models as columns (side by side), then the --localize rankings."""
    table = Table(title="Local equivariance error (finite rotations)")
    table.add_column("metric")
    for row in rows:
        table.add_column(row["name"], justify="right", overflow="fold")
    table.add_row("model", *[r["label"] if r["argument"] else "FP32 floor" for r in rows])
    for name, key in _METRICS:
        table.add_row(name, *[_fmt(r["lee"][key], ".2e" if key == "force_relative" else ".3g")
                              for r in rows])
    table.add_row("F mean vs FP32 floor", *[
        "floor" if r["kind"] == "fp32" and r["ratio_to_floor"] == 1.0
        else _fmt_ratio(r["ratio_to_floor"]) for r in rows])
    console.print(table)
    console.print("[dim]finite Haar rotations, seeded; the Lie-derivative LEE would miss rounding "
                  "errors (round() has zero derivative)[/]", highlight=False)
    if not localize:
        return
    for row in rows:
        if not row["argument"]:
            continue
        local = Table(title=f"Top {top} modules breaking equivariance: {row['name']}")
        local.add_column("#", justify="right")
        local.add_column("module", overflow="fold")
        for name in ("introduced", "output", "input"):
            local.add_column(name, justify="right")
        for k, entry in enumerate(row["localization"][:top], 1):
            local.add_row(str(k), f"{entry['path']}\n[dim]{entry['kind']}[/]",
                          _fmt(entry["introduced_error"], ".2e"), _fmt(entry["output_error"], ".2e"),
                          _fmt(entry["input_error"], ".2e"))
        console.print(local)
    console.print("[dim]module errors are relative: |out(Rx) - D(R) out(x)| / |out(x)|; "
                  "introduced = output error - input error[/]", highlight=False)


def _measure(rows, data, rmd17_dir, num_frames, rotations, seed, localize, json_output, notes) -> None:
    from gaqtool.metrics.equivariance import local_equivariance_error
    from gaqtool.metrics.localization import localize_equivariance

    cache: dict = {}
    for row in rows:  # data and elements first: no error after minutes of measuring
        loaded: LoadedModel = row["model"]
        row["frames"], _ = _frames_for(loaded.molecule, data, rmd17_dir, num_frames, cache, notes)
        check_elements(loaded, row["frames"], data)
        warn_if_uncalibrated(loaded, row["frames"].numbers)
    total = len(rows) * rotations + (sum(r["argument"] for r in rows) * rotations if localize else 0)
    with progress(json_output) as bar:
        task = bar.add_task("LEE", total=total, info="")
        for row in rows:
            loaded = row["model"]
            frames = row.pop("frames")
            bar.update(task, info=display_name(loaded))
            row["lee"] = local_equivariance_error(loaded.model, frames, rotations, seed,
                                                  on_progress=lambda n: bar.update(task, advance=n))
            if localize and row["argument"]:
                row["localization"] = localize_equivariance(
                    loaded.model, frames, rotations, seed, batch_size=len(frames),
                    on_progress=lambda n: bar.update(task, advance=n))


def _finish_rows(rows: list[dict[str, Any]]) -> None:
    """Add path, label and the ratio of mean force LEE to the parent's (or own) FP32 floor."""
    floors = {str(r["model"].path): r["lee"]["force_mean_mev_a"] for r in rows if r["model"].kind == "fp32"}
    for row in rows:
        loaded: LoadedModel = row.pop("model")
        row.update(path=str(loaded.path), name=display_name(loaded), label=loaded.label, kind=loaded.kind)
        floor = floors.get(row["path"]) if loaded.kind == "fp32" else floors.get(row.get("parent") or "")
        row["floor_force_mean_mev_a"] = floor
        row["ratio_to_floor"] = row["lee"]["force_mean_mev_a"] / floor if floor else None


@app.command("lee-check", short_help="Local equivariance error beside the FP32 floor.")
def lee_check(
    models: ModelsArgument = None,
    num_frames: Annotated[int, typer.Option("--frames", min=1, help="Test frames (the first N of --data).")] = DEFAULT_FRAMES,
    rotations: Annotated[int, typer.Option("--rotations", min=1, help="Haar-random rotations per frame (seeded).")] = 4,
    data: Annotated[Optional[str], typer.Option("--data", help="Frames: rmd17 (the model's molecule, test split), rmd17:<molecule>, universal (crystals and molecules made by code), or a file (extxyz, traj, ...; cells are rotated with the atoms). Default: rmd17 if the first model has a molecule, universal otherwise.", show_default=False)] = None,
    fp32: Annotated[Optional[Path], typer.Option("--fp32", help="FP32 parent (checkpoint or named model) for the floor row. Default: an FP32 argument or the embedded model whose SHA-256 matches the quantized file's source, or the named model / checkpoint the file records.")] = None,
    localize: Annotated[bool, typer.Option("--localize", help="Also rank the modules that introduce the most equivariance error.")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Modules shown per model with --localize.")] = 5,
    threshold: Annotated[Optional[float], typer.Option("--threshold", min=0.0, help="Exit with code 1 if any model's mean force LEE exceeds this (meV/A); for CI.")] = None,
    force_mode: ForceModeOverrideOption = None,
    modal: ModalOption = None,
    e3nn_convolution: E3nnConvolutionOption = False,
    rmd17_dir: Rmd17DirOption = None,
    trust_pickle: TrustPickleOption = False,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Local equivariance error |F(Rx) - R F(x)|, |E(Rx) - E(x)| of models, beside the FP32 floor."""
    check_spec(data, "--data")
    threads = use_threads(threads)
    if models or fp32 is not None or modal is not None:
        loaded = load_models(list(models or [None]), trust_pickle, force_mode, modal, e3nn_convolution)
        parents, notes = _find_parents(loaded, fp32, trust_pickle)
    else:
        notes = []
        with progress(json_output) as bar:
            bar.add_task("quantizing on the fly", total=None, info="naive and GAQ W4A8")
            loaded, parents = _on_the_fly(force_mode, rmd17_dir, notes)
    rows = _rows(loaded, parents)
    spec = data or default_spec(loaded[0].molecule)
    _measure(rows, spec, rmd17_dir, num_frames, rotations, seed, localize, json_output, notes)
    _finish_rows(rows)
    exceeded = [r for r in rows if r["argument"] and threshold is not None
                and not r["lee"]["force_mean_mev_a"] <= threshold]
    if json_output:
        print_json({"rows": rows, "notes": notes, "rotations": rotations, "seed": seed,
                    "threshold_mev_a": threshold, "exceeded": [r["path"] for r in exceeded]})
    else:
        for note in notes:
            log.print(f"[dim]{escape(note)}[/]", highlight=False)
        _render(rows, top, localize)
    if exceeded:
        for r in exceeded:
            console.print(f"[bold red]LEE above threshold:[/] {r['path']}: mean force LEE "
                          f"{r['lee']['force_mean_mev_a']:.4g} meV/A > {threshold:g} meV/A", highlight=False)
        raise typer.Exit(1)
    if threshold is not None and not json_output:
        console.print(f"all models within the threshold of {threshold:g} meV/A", highlight=False)
