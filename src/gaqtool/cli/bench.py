"""`gaqtool bench`: latency and peak memory of energy + forces, FP32 vs quantized, in one run.

Configurations (all with parameters frozen, so autograd tracks positions only):
  fp32        the FP32 model
  bf16        the FP32 model under ``torch.autocast('cpu', bfloat16)``
  fake-quant  the quantized model as stored: dequantized float weights, fake-quant activations
  dynamics    the quantized model as ``md`` and ``GAQCalculator`` run it by default: force mode
              'conservative', the energy whose gradient the forces are, in one pass
  int8        the quantized model with ``enable_integer_kernels`` (int8 GEMMs, compiled quant/dequant)
  int8-eager  the same with eager quant/dequant
Systems: 1 aspirin; a batch of ``--batch-size`` aspirins (separate molecules); one system of
``--cluster-molecules`` aspirins centred on a cubic grid ``--spacing`` A apart (neighbouring
molecules interact within the cutoff; 48 molecules -> 1008 atoms).
Memory: model tensor bytes (parameters, buffers, integer-kernel copies; shared storage counted
once) plus the peak of bytes allocated and not yet freed during one energy + forces call, from
the allocation events of ``torch.profiler`` (exact allocator accounting, no RSS noise).
The timing harness lives here rather than in a library module (one command, one harness).
"""

from __future__ import annotations

import contextlib
import copy
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from gaqtool.cli.app import app
from gaqtool.cli.console import console, log, print_json
from gaqtool.cli.options import ForceModeOverrideOption, JsonOption, ModalOption
from gaqtool.errors import InputError

CONFIGS = ("fp32", "bf16", "fake-quant", "dynamics", "int8", "int8-eager")
DEFAULT_CONFIGS = ["fp32", "bf16", "fake-quant", "dynamics", "int8"]


def cpu_description() -> str:
    """CPU model name and the SIMD features that matter for int8/bf16 GEMMs."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    features = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{name} ({', '.join(features) or 'no AVX-512'})"


def bench_systems(frames, cutoff: float, batch_size: int, cluster_molecules: int, spacing: float):
    """[(name, batch, description)] built from rMD17 aspirin frames (positions in A)."""
    import torch

    from gaqtool.data.graph import Batch, make_batch, radius_graph

    pick = [i % len(frames) for i in range(max(batch_size, cluster_molecules))]
    systems = [("1 aspirin", make_batch(frames, [0], cutoff), "frame 0 of the shipped test sample"),
               (f"{batch_size} aspirins", make_batch(frames, pick[:batch_size], cutoff),
                f"{batch_size} separate molecules in one batch")]
    nx = math.ceil(cluster_molecules ** (1 / 3) - 1e-9)
    ny = math.ceil(math.sqrt(cluster_molecules / nx) - 1e-9)
    parts, numbers = [], []
    for j, i in enumerate(pick[:cluster_molecules]):
        pos = torch.from_numpy(frames.positions[i]).float()
        cell = torch.tensor([j % nx, (j // nx) % ny, j // (nx * ny)], dtype=torch.float32)
        parts.append(pos - pos.mean(0) + spacing * cell)
        numbers.append(torch.from_numpy(frames.numbers[i]))
    positions, numbers = torch.cat(parts), torch.cat(numbers).long()
    molecule = torch.zeros(len(numbers), dtype=torch.long)
    src, dst = radius_graph(positions, molecule, cutoff)
    systems.append((f"{cluster_molecules}-aspirin grid", Batch(numbers, positions, molecule, 1, src, dst),
                    f"{cluster_molecules} aspirins centred on a grid {spacing:g} A apart, one system"))
    return systems


def crystal_system(cutoff: float):
    """(name, batch, description) of a 64-atom Si diamond cell (periodic), for universal models."""
    import numpy as np
    from ase.build import bulk

    from gaqtool.data.graph import structures_batch

    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=0)
    batch = structures_batch([atoms.numbers], [atoms.positions], [np.array(atoms.cell[:])],
                             [atoms.pbc.copy()], cutoff)
    return ("Si 64 (periodic)", batch, "2x2x2 cubic Si diamond cell, rattled 0.05 A")


def _freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def model_tensor_bytes(model) -> int:
    """Bytes of parameters, buffers and integer-kernel weight copies (each storage once)."""
    import torch

    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [getattr(m.integer_forward, "weight_t", None) for m in model.modules()
                if getattr(m, "integer_forward", None) is not None]
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def peak_allocated_bytes(run: Callable[[], object]) -> int:
    """Peak of (allocated - freed) bytes during ``run()``, from torch.profiler memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def energy_forces_call(model, batch, autocast: bool, dynamics: bool = False) -> Callable[[], tuple]:
    """A function running energy + forces once: ((M,) float64 eV, (n, 3) float32 eV/A), as
    evaluated (``energy_and_forces``) or, with ``dynamics``, as MD runs it."""
    import torch

    from gaqtool.potential import energy_and_forces
    from gaqtool.quant.apply import dynamics_prediction

    def run():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            if dynamics:
                prediction = dynamics_prediction(model, batch)[0]
                energies, forces = prediction.energies, prediction.forces
            else:
                energies, forces = energy_and_forces(model, batch)
        return energies.detach(), forces.detach().float()

    return run


def time_round_robin(runs: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
    """Seconds per call: each repeat runs every configuration once, in a rotating order, so that
    background load and clock changes hit all configurations alike."""
    names, times = list(runs), {name: [] for name in runs}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    return times


def build_configs(fp32, quantized, configs: list[str]) -> tuple[dict, dict]:
    """{name: (model, autocast)} and the integer-kernel reports of the int8 configurations."""
    from gaqtool.config import ForceMode
    from gaqtool.kernels import enable_integer_kernels
    from gaqtool.quant.apply import set_force_mode

    models, reports = {}, {}
    for name in ["fp32"] + [c for c in configs if c != "fp32"]:
        if name in ("fp32", "bf16"):
            models[name] = (_freeze(copy.deepcopy(fp32)), name == "bf16")
            continue
        model = _freeze(copy.deepcopy(quantized))
        if name == "dynamics":
            set_force_mode(model, ForceMode.CONSERVATIVE)  # md's and the calculator's default
        if name.startswith("int8"):
            reports[name] = enable_integer_kernels(model, compile=(name == "int8")).to_dict()
        models[name] = (model, False)
    return models, reports


def run_benchmark(fp32, quantized, systems, configs: list[str], repeats: int, warmup: int,
                  memory: bool, on_step: Callable[[str], None] | None = None) -> dict:
    """Every configuration on every system: first call (accuracy vs fp32, compile time),
    warm-up, round-robin timing, then one profiled call for memory. A configuration that fails
    (e.g. an op without a bf16 kernel) is recorded as failed, not raised."""
    models, reports = build_configs(fp32, quantized, configs)
    results = []
    for system, batch, _ in systems:
        rows, runs = {}, {}
        for name, (model, autocast) in models.items():
            if on_step:
                on_step(f"{name} on {system}")
            run = energy_forces_call(model, batch, autocast, dynamics=(name == "dynamics"))
            row = {"config": name, "system": system}
            try:
                started = time.perf_counter()
                energies, forces = run()
                row["first_call_s"] = time.perf_counter() - started
                for _ in range(max(0, warmup - 1)):
                    run()
            except RuntimeError as exc:
                row.update(status=f"failed: {str(exc).splitlines()[0][:160]}", median_s=None)
                results.append(row)
                continue
            e0, f0 = rows["fp32"]["_out"] if "fp32" in rows else (energies, forces)
            row.update(status="ok", _out=(energies, forces), model_bytes=model_tensor_bytes(model),
                       max_abs_energy_error_meV=float((energies - e0).abs().max()) * 1e3,
                       max_abs_force_error_meV_per_A=float((forces - f0).abs().max()) * 1e3)
            rows[name], runs[name] = row, run
        for name, times in time_round_robin(runs, repeats).items():
            rows[name].update(median_s=statistics.median(times), min_s=min(times), repeats=repeats)
        for name, row in rows.items():
            row.pop("_out")
            if memory:
                row["peak_activation_bytes"] = peak_allocated_bytes(runs[name])
                row["peak_bytes"] = row["model_bytes"] + row["peak_activation_bytes"]
            results.append(row)
    return {"results": results, "ratios": _ratios(results), "integer_kernels": reports}


def _ratios(results: list[dict]) -> dict:
    """speedup = fp32 median / config median; memory = config peak bytes / fp32 peak bytes;
    int8 rows also get speedup_vs_fake_quant (the gain of the kernels alone)."""
    ok = {(r["config"], r["system"]): r for r in results if r["status"] == "ok"}
    ratios: dict = {}
    for (config, system), r in ok.items():
        b = ok.get(("fp32", system))
        if config == "fp32" or b is None:
            continue
        entry = {"speedup": b["median_s"] / r["median_s"]}
        if "peak_bytes" in r:
            entry["memory"] = r["peak_bytes"] / b["peak_bytes"]
        fake = ok.get(("fake-quant", system))
        if config.startswith("int8") and fake is not None:
            entry["speedup_vs_fake_quant"] = fake["median_s"] / r["median_s"]
        ratios.setdefault(config, {})[system] = entry
    return ratios


def _recorded_parent(quantized):
    """The FP32 parent a quantized file records (named model, checkpoint with the recorded
    SHA-256, or the embedded model), or an InputError that says where to find one."""
    from gaqtool.cli.evaluate import recorded_parent
    from gaqtool.io.checkpoint import default_model_path

    parent, how = recorded_parent(quantized)
    if parent is None:
        raise InputError(f"bench {quantized.path.name} needs its FP32 parent: {how}",
                         hint=f"gaqtool bench FP32_MODEL {quantized.path} (the embedded model is "
                              f"{default_model_path()})")
    log.print(f"[dim]FP32 parent: {how}[/]", highlight=False)
    return parent


def _load_pair(fp32_path: Optional[Path], quantized_path: Optional[Path], force_mode=None, modal=None):
    from gaqtool.config import QuantConfig
    from gaqtool.data.spec import default_spec, resolve_data
    from gaqtool.io.loading import load_model
    from gaqtool.workflow import quantize_loaded

    fp32 = load_model(fp32_path, modal=modal)
    if fp32.kind != "fp32" and quantized_path is None:  # `bench QUANTIZED`: its recorded parent
        fp32, quantized_path = _recorded_parent(fp32), fp32_path
    elif fp32.kind != "fp32":
        raise InputError(f"{fp32.path} is a quantized file, the first argument is the FP32 model",
                         hint="gaqtool bench FP32_MODEL.pt [QUANTIZED.safetensors]")
    if quantized_path is None:
        config = QuantConfig.from_preset("w4a8", **({"force_mode": force_mode} if force_mode else {}))
        calibration = resolve_data(default_spec(fp32.molecule), "train", None, fp32.molecule)
        quantized, _ = quantize_loaded(fp32.model, config, calibration.frames)
        return fp32, quantized, (f"gaq w4a8, {config.force_mode.value} forces, quantized on the fly "
                                 f"({calibration.description})")
    loaded = load_model(quantized_path, force_mode=force_mode)
    if loaded.kind != "quantized":
        raise InputError(f"{loaded.path} is not a quantized file",
                         hint="pass a .safetensors file written by `gaqtool quantize`")
    def architecture(config: dict) -> dict:  # the energy correction moves energy_shift
        return {k: v for k, v in config.items() if k != "energy_shift"}

    if architecture(loaded.model.config) != architecture(fp32.model.config):
        log.print("[yellow]warning:[/] the quantized file's model config differs from the FP32 model's")
    return fp32, loaded.model, f"{loaded.label} from {loaded.path}"


def _render(data: dict) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"energy + forces, {data['threads']} threads, {data['cpu']}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("system", "config", "ms", "x fp32", "MB", "mem", "dE", "dF"):
        text = col in ("system", "config")
        table.add_column(col, justify="left" if text else "right", no_wrap=not text,
                         overflow="fold" if text else "ellipsis")
    failures = []
    for r in data["results"]:
        ratio = data["ratios"].get(r["config"], {}).get(r["system"], {})
        if r["status"] != "ok":
            failures.append(f"{r['config']} on {r['system']}: {r['status']}")
            table.add_row(r["system"], r["config"], "failed", "", "", "", "", "")
            continue
        table.add_row(r["system"], r["config"], f"{r['median_s'] * 1e3:.1f}",
                      f"{ratio['speedup']:.2f}x" if ratio else "1",
                      f"{r['peak_bytes'] / 1e6:.1f}" if "peak_bytes" in r else "-",
                      f"{ratio['memory']:.2f}x" if "memory" in ratio else ("1" if not ratio else "-"),
                      f"{r['max_abs_energy_error_meV']:.3g}", f"{r['max_abs_force_error_meV_per_A']:.3g}")
    console.print(table)
    for failure in failures:
        console.print(f"[yellow]{failure}[/]", highlight=False, soft_wrap=False)
    console.print(f"[dim]quantized: {data['quantized']}. ms: median of {data['repeats']} runs after "
                  f"{data['warmup']} warm-up; x fp32: speedup; MB: model tensors + peak allocated "
                  "during one call; mem: vs fp32; dE (meV), dF (meV/A): max deviation from fp32[/]", highlight=False)


@app.command(short_help="Latency and peak memory: FP32, bf16, fake-quant, int8.")
def bench(
    fp32_model: Annotated[Optional[Path], typer.Argument(help="FP32 model: checkpoint (.pt, SevenNet .pth) or named model (sevenn:7net-0); or a quantized file alone, timed against the FP32 parent it records. Default: the embedded aspirin model.", show_default=False)] = None,
    quantized_file: Annotated[Optional[Path], typer.Argument(help="Quantized .safetensors of that model. Default: quantize it on the fly (gaq w4a8) in memory.", show_default=False)] = None,
    configs: Annotated[Optional[List[str]], typer.Option("--config", help=f"Configuration to run; repeatable; one of {', '.join(CONFIGS)} (fp32 always runs). Default: fp32, bf16, fake-quant, dynamics, int8.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per configuration and system (median reported).")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first (compilation happens here).")] = 2,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Molecules in the batched system.")] = 32,
    cluster_molecules: Annotated[int, typer.Option("--cluster-molecules", min=1, help="Aspirins in the grid system (48 -> 1008 atoms).")] = 48,
    spacing: Annotated[float, typer.Option("--spacing", min=1.0, help="Grid spacing of the cluster system, Angstrom.")] = 8.0,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Also measure peak memory (one profiled call each).")] = True,
    force_mode: ForceModeOverrideOption = None,
    modal: ModalOption = None,
    json_output: JsonOption = False,
) -> None:
    """Median latency and peak memory of energy + forces: FP32, bf16, fake-quant, dynamics, int8."""
    import torch

    from gaqtool.data.frames import read_npz
    from gaqtool.data.spec import sample_path

    chosen = list(dict.fromkeys(configs or DEFAULT_CONFIGS))
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown:
        raise InputError(f"unknown --config {', '.join(unknown)}", hint=f"choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(threads)
    fp32, quantized, note = _load_pair(fp32_model, quantized_file, force_mode, modal)
    if fp32.molecule is None:  # a universal model: one molecule and one periodic crystal
        systems = bench_systems(read_npz(sample_path("test")), fp32.model.cutoff, 1, 1, spacing)[:1]
        systems.append(crystal_system(fp32.model.cutoff))
    else:
        systems = bench_systems(read_npz(sample_path("test")), fp32.model.cutoff, batch_size,
                                cluster_molecules, spacing)
    on_step = None if json_output else (lambda s: log.print(f"[dim]running {s}[/]", highlight=False))
    data = {"cpu": cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "fp32_model": str(fp32.path), "quantized": note, "repeats": repeats, "warmup": warmup,
            "systems": [{"name": n, "atoms": len(b.numbers), "edges": len(b.edge_src), "description": d}
                        for n, b, d in systems]}
    data.update(run_benchmark(fp32.model, quantized, systems, chosen, repeats, warmup, memory, on_step))
    if json_output:
        print_json(data)
        return
    _render(data)
