"""`gaqtool md`: NVE energy conservation of one or more models from the same start; no math here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, List, Optional

import numpy as np
import typer
from rich.table import Table

from gaqtool.cli.app import app
from gaqtool.cli.console import console, log, print_json, progress
from gaqtool.cli.parents import display_name
from gaqtool.cli.evaluate import warn_if_uncalibrated
from gaqtool.cli.lee import load_models
from gaqtool.cli.options import (E3nnConvolutionOption, JsonOption, ModalOption, Rmd17DirOption, SeedOption,
                                 ThreadsOption, TrustPickleOption, use_threads)
from gaqtool.io.atomic import check_writable
from gaqtool.config import ForceMode
from gaqtool.data.spec import check_spec, resolve_data
from gaqtool.errors import DataError, InputError, Interrupted

if TYPE_CHECKING:  # torch- and ase-heavy; imported where used, so that --help stays fast
    from gaqtool.io.loading import LoadedModel
    from gaqtool.md import MDSettings

ModelsArgument = Annotated[Optional[List[Path]], typer.Argument(
    help="Models run from the same start: quantized .safetensors files, gaqtool checkpoints (.pt), "
         "SevenNet checkpoints (.pth) or named models (sevenn:7net-0, ...). Default: the embedded model.",
    show_default=False)]

# the start of a universal model with no molecule and no --structure / --data: crystalline Si,
# the 8-atom conventional diamond cell repeated 2x2x2 (64 atoms, 10.86 A box)
DEFAULT_CRYSTAL = dict(name="Si", crystalstructure="diamond", a=5.43, cubic=True)
DEFAULT_REPEATS = (2, 2, 2)


@dataclass
class Start:
    """The starting structure: numbers (N,), positions (N, 3) A, cell (3, 3) rows A or None,
    pbc (3,) bool or None, and where it came from."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray | None
    pbc: np.ndarray | None
    origin: str

    @property
    def periodic(self) -> bool:
        return self.pbc is not None and bool(np.any(self.pbc))


def _default_crystal() -> Start:
    from ase.build import bulk

    atoms = bulk(**DEFAULT_CRYSTAL) * DEFAULT_REPEATS
    return Start(np.asarray(atoms.numbers), np.asarray(atoms.positions), np.asarray(atoms.cell[:]),
                 np.asarray(atoms.pbc), f"Si diamond, a = {DEFAULT_CRYSTAL['a']} A, "
                 f"{'x'.join(map(str, DEFAULT_REPEATS))} conventional cells ({len(atoms)} atoms, "
                 "periodic; the default for a model without a molecule)")


def _start_structure(structure: Optional[Path], data: Optional[str], frame: int, rmd17_dir,
                     molecule: str | None) -> Start:
    """The starting geometry: a frame of --structure, a frame of --data, or the default (rMD17
    of the model's molecule; a silicon crystal for a model without one)."""
    if structure is not None:
        import ase.io

        if not structure.is_file():
            raise DataError(f"structure file not found: {structure}", hint="check the path")
        try:
            atoms = ase.io.read(str(structure), index=frame)
        except IndexError:
            raise InputError(f"--frame {frame} is out of range for {structure}") from None
        except Exception as exc:  # ase raises many types for unreadable files
            raise DataError(f"cannot read {structure} with ASE: {exc}",
                            hint="use an xyz/extxyz/traj/... file ASE can read") from None
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        if np.any(pbc) and abs(np.linalg.det(cell[pbc][:, pbc])) < 1e-6:
            raise DataError(f"{structure} frame {frame}: periodic but its cell has no volume",
                            hint="give the structure its lattice vectors, or pbc=False for a molecule")
        kind = f"periodic, {len(atoms)} atoms" if np.any(pbc) else f"{len(atoms)} atoms"
        return Start(np.asarray(atoms.numbers), np.asarray(atoms.positions), cell if np.any(pbc) else None,
                     pbc if np.any(pbc) else None, f"{structure} frame {frame} ({kind})")
    if data is None and not molecule:
        if frame:
            raise InputError("--frame needs --data or --structure",
                             hint="the default start of a model without a molecule is one crystal")
        return _default_crystal()
    spec = data or "rmd17"
    selection = resolve_data(spec, "test", rmd17_dir, molecule)
    frames = selection.frames
    if not 0 <= frame < len(frames):
        raise InputError(f"--frame {frame} is out of range: {spec} has {len(frames)} frames",
                         hint=f"choose 0..{len(frames) - 1}")
    periodic = bool(np.any(frames.periodic(frame)))
    return Start(frames.numbers[frame], frames.positions[frame],
                 frames.cell(frame) if periodic else None, frames.periodic(frame) if periodic else None,
                 f"{selection.note}; frame {frame}")


def _trajectory_paths(trajectory: Optional[Path], count: int) -> list[Optional[Path]]:
    """out.traj for one model; out_1.traj, out_2.traj, ... (argument order) for several."""
    if trajectory is None:
        return [None] * count
    if count == 1:
        return [trajectory]
    return [trajectory.with_name(f"{trajectory.stem}_{k}{trajectory.suffix}") for k in range(1, count + 1)]


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _render(runs: list[dict[str, Any]], settings: MDSettings, periodic: bool = False) -> None:
    table = Table(title=f"NVE velocity Verlet{', fixed cell' if periodic else ''}: dt "
                        f"{settings.timestep_fs:g} fs, {settings.steps} steps, "
                        f"from {settings.temperature_k:g} K, seed {settings.seed}")
    table.add_column("")
    for k, run in enumerate(runs, 1):
        table.add_column(f"[{k}] {run['name']}", justify="right", overflow="fold")
    rows = (("model", lambda s, r: r["label"]),
            ("steps run", lambda s, r: f"{s['steps_done']}/{s['steps_requested']}"),
            ("drift (meV/atom/ps)", lambda s, r: _fmt(s["drift_mev_atom_ps"])),
            ("max |E - E0| (meV/atom)", lambda s, r: _fmt(s["max_abs_energy_deviation_mev_atom"])),
            ("E std about the fit (meV/atom)", lambda s, r: _fmt(s["energy_std_about_fit_mev_atom"])),
            ("T mean / final (K)", lambda s, r: f"{s['temperature_mean_k']:.0f} / {s['temperature_final_k']:.0f}"),
            ("status", lambda s, r: f"[red]blew up[/] ({s['blowup_reason']})" if s["blew_up"] else "[green]ok[/]"))
    if any("quantized_energy_drift_mev_atom_ps" in run["summary"] for run in runs):
        rows += (("E_q drift (meV/atom/ps)", lambda s, r: _fmt(s.get("quantized_energy_drift_mev_atom_ps"))),
                 ("max change of E_q - E (meV/atom)", lambda s, r: _fmt(s.get("max_abs_gap_change_mev_atom"))))
    for name, cell in rows:
        table.add_row(name, *[cell(run["summary"], run) for run in runs])
    console.print(table)
    console.print("[dim]E: the potential whose gradient the forces are (an activation-quantized "
                  "file in force mode 'conservative': E_s, activation rounding off); drift: slope "
                  "of a linear fit of E + E_kin"
                  + ("; E_q: the activation-quantized energy that eval measures" if any(
                      "max_abs_gap_change_mev_atom" in run["summary"] for run in runs) else "") + "[/]",
                  highlight=False)


@app.command("md", short_help="NVE dynamics: energy drift and blow-ups, side by side.")
def md(
    models: ModelsArgument = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Start from a frame of: rmd17 (the model's molecule, test split), rmd17:<molecule>, universal, or a file (cells are kept). Default: rmd17 for a model with a molecule; for one without (SevenNet), a 64-atom silicon crystal.", show_default=False)] = None,
    frame: Annotated[int, typer.Option("--frame", min=0, help="Index of the starting frame in --data (or in --structure).")] = 0,
    structure: Annotated[Optional[Path], typer.Option("--structure", help="Start from this structure file (any format ASE reads; a periodic cell runs at fixed cell) instead of --data.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Maxwell-Boltzmann start temperature in K.")] = 300.0,
    timestep: Annotated[float, typer.Option("--dt", min=0.01, max=10.0, help="Time step in fs.")] = 0.5,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Velocity-Verlet steps.")] = 2000,
    log_every: Annotated[int, typer.Option("--log-every", min=1, help="Steps between trajectory frames / JSON series points.")] = 10,
    blowup_distance: Annotated[float, typer.Option("--blowup-distance", min=0.1, help="Stop when an atom is farther than this from the centroid (a molecule) or from its start (a periodic cell), Angstrom.")] = 10.0,
    trajectory: Annotated[Optional[Path], typer.Option("--trajectory", help="Write an ASE .traj (several models: NAME_1.traj, NAME_2.traj, ... in argument order).")] = None,
    force_mode: Annotated[ForceMode, typer.Option("--force-mode", help="Forces of activation-quantized models: conservative (-dE_s/dx of the model with activation rounding off, so the dynamics conserve E_s + E_kin) or ste (straight through the rounding, as the file's eval does: not conservative, drifts). FP32 and weight-only models are exact either way.")] = ForceMode.CONSERVATIVE,
    quantized_energy: Annotated[bool, typer.Option("--quantized-energy", help="Also track E_q, the activation-quantized energy that eval measures, and report how far E_q - E drifts (one more forward pass per step).")] = False,
    modal: ModalOption = None,
    e3nn_convolution: E3nnConvolutionOption = False,
    rmd17_dir: Rmd17DirOption = None,
    trust_pickle: TrustPickleOption = False,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """NVE molecular dynamics: total-energy drift and blow-ups, several models side by side."""
    for path in _trajectory_paths(trajectory, len(models or [None])):
        if path is not None:
            check_writable(path, "--trajectory")
    if structure is None:
        check_spec(data, "--data")
    from gaqtool.ase import GAQCalculator
    from gaqtool.md import MDSettings, initial_state, run_nve, write_trajectory

    threads = use_threads(threads)
    loaded: list[LoadedModel] = load_models(list(models or [None]), trust_pickle, force_mode, modal,
                                            e3nn_convolution)
    begin = _start_structure(structure, data, frame, rmd17_dir, loaded[0].molecule)
    for model in loaded:
        warn_if_uncalibrated(model, [begin.numbers])
    settings = MDSettings(temperature_k=temperature, timestep_fs=timestep, steps=steps,
                          log_every=log_every, seed=seed, blowup_distance=blowup_distance)
    start = initial_state(begin.numbers, begin.positions, temperature, seed, begin.cell, begin.pbc)
    origin = begin.origin
    calculators = [GAQCalculator(m, force_mode=None, quantized_energy=quantized_energy, threads=threads,
                                 warn_uncalibrated=False)  # warned above, as one line
                   for m in loaded]  # loaded in force_mode above
    for calc in calculators:
        calc.check_atoms(start)  # unknown elements fail before any dynamics
    if not json_output:
        log.print(f"[dim]start: {origin}[/]", highlight=False)
    runs = []
    with progress(json_output) as bar:
        for k, (m, calc, traj) in enumerate(zip(loaded, calculators, _trajectory_paths(trajectory, len(loaded))), 1):
            task = bar.add_task(f"[{k}] {display_name(m)}", total=steps, info=m.label)
            result = run_nve(start, calc, settings, lambda n: bar.update(task, advance=n))
            if result.steps_done < 0:  # Ctrl-C before the first energy: nothing to keep
                break
            if traj is not None and result.snapshots:
                write_trajectory(traj, result.snapshots)
            runs.append({"path": str(m.path), "name": display_name(m), "label": m.label, "kind": m.kind,
                         "summary": result.summary(), "interrupted": result.interrupted,
                         "series": result.series(), "trajectory": str(traj) if traj and result.snapshots else None})
            if result.interrupted:
                break
    interrupted = len(runs) < len(loaded) or any(run["interrupted"] for run in runs)
    if json_output:
        print_json({"start": origin, "num_atoms": len(start), "periodic": begin.periodic,
                    "cell": begin.cell.tolist() if begin.periodic else None,
                    "settings": settings.__dict__, "runs": runs, "interrupted": interrupted})
        if interrupted:
            raise typer.Exit(130)
        return
    if runs:
        _render(runs, settings, begin.periodic)
    for run in runs:
        if run["trajectory"]:
            log.print(f"wrote {run['trajectory']}", highlight=False)
    if interrupted:
        done = runs[-1]["summary"]["steps_done"] if runs else 0
        raise Interrupted(f"interrupted (Ctrl-C) at step {done} of model [{max(1, len(runs))}]" +
                          ("; the table shows the steps done" if runs else ""))
