"""`gaqtool bench`: latency and peak memory of energy + forces, FP32 vs quantized, in one run.

Configurations (gaqtool's with parameters frozen, so autograd tracks positions only):
  sevenn      SevenNet models only: sevenn's own calculator model on its own graph (the
              reference of the ratios where it runs; it also computes stress)
  fp32        the FP32 model (SevenNet: with gaqtool's fused convolution)
  fp32-e3nn   SevenNet models only: the FP32 model with sevenn's e3nn convolution
  bf16        the FP32 model under ``torch.autocast('cpu', bfloat16)``
  fake-quant  the quantized model as stored: dequantized float weights, fake-quant activations
  dynamics    the quantized model as ``md`` and ``GAQCalculator`` run it by default: force mode
              'conservative', the energy whose gradient the forces are, in one pass
  int8        the quantized model with ``enable_integer_kernels`` as the API runs it: int8 GEMMs
              with compiled quant/dequant, in each direction only at the sizes where this
              machine measured them faster (nothing switched where int8 GEMMs are slow)
  int8-all    int8 in every eligible call, whatever it costs here (compiled)
  int8-eager  int8 in every eligible call, eager quant/dequant
Systems: 1 aspirin; a batch of ``--batch-size`` aspirins (separate molecules); one system of
``--cluster-molecules`` aspirins centred on a cubic grid ``--spacing`` A apart (neighbouring
molecules interact within the cutoff; 48 molecules -> 1008 atoms). Universal models (no fitted
molecule, e.g. SevenNet): 1 aspirin, ``--batch-size`` aspirins 20 A apart (one structure) and a
216-atom periodic Si cell.
The fused convolution's achieved FLOP/s and the CPU's peaks: ``gaqtool.kernels.roofline``.
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
import warnings
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from gaqtool.cli.app import app
from gaqtool.cli.console import console, log, print_json, warn
from gaqtool.cli.options import ForceModeOverrideOption, JsonOption, ModalOption
from gaqtool.errors import InputError

CONFIGS = ("sevenn", "fp32", "fp32-e3nn", "bf16", "fake-quant", "dynamics", "int8", "int8-all",
           "int8-eager")
DEFAULT_CONFIGS = ["fp32", "bf16", "fake-quant", "dynamics", "int8"]
SEVENN_DEFAULT_CONFIGS = ["sevenn", "fp32", "fake-quant", "dynamics"]
SEVENN_ONLY = ("sevenn", "fp32-e3nn")


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
    """[(name, batch, description, None)] built from rMD17 aspirin frames (positions in A); the
    last entry is ase.Atoms for universal systems (see :func:`universal_systems`)."""
    import torch

    from gaqtool.data.graph import Batch, make_batch, radius_graph

    pick = [i % len(frames) for i in range(max(batch_size, cluster_molecules))]
    systems = [("1 aspirin", make_batch(frames, [0], cutoff), "frame 0 of the shipped test sample", None),
               (f"{batch_size} aspirins", make_batch(frames, pick[:batch_size], cutoff),
                f"{batch_size} separate molecules in one batch", None)]
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
                    f"{cluster_molecules} aspirins centred on a grid {spacing:g} A apart, one system", None))
    return systems


def universal_systems(frames, cutoff: float, batch_size: int):
    """[(name, batch, description, ase.Atoms)] for universal models: 1 aspirin, ``batch_size``
    aspirins 20 A apart in one non-periodic structure, 216-atom periodic Si (rattled 0.05 A)."""
    import numpy as np
    from ase import Atoms
    from ase.build import bulk

    from gaqtool.data.graph import structures_batch

    def molecules(count: int) -> Atoms:
        side = math.ceil(count ** (1 / 3) - 1e-9)
        parts = []
        for j in range(count):
            i = j % len(frames)
            shift = 20.0 * np.array([j % side, (j // side) % side, j // side ** 2])
            parts.append(Atoms(numbers=frames.numbers[i], positions=frames.positions[i]
                               - frames.positions[i].mean(0) + shift))
        return sum(parts[1:], parts[0])

    silicon = bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 3)
    silicon.rattle(0.05, seed=0)
    named = [("1 aspirin", molecules(1), "frame 0 of the shipped test sample"),
             (f"{batch_size} aspirins", molecules(batch_size),
              f"{batch_size} test frames 20 A apart, one non-periodic structure"),
             ("Si 216", silicon, "3x3x3 cubic Si diamond cell (periodic), rattled 0.05 A")]
    return [(name, structures_batch([a.numbers], [a.positions], [np.array(a.cell[:])], [a.pbc.copy()],
                                    cutoff), description, a) for name, a, description in named]


def _freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def model_tensor_bytes(model) -> int:
    """Bytes of parameters, buffers and integer-kernel weight copies (each storage once)."""
    import torch

    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [getattr(m.integer_forward, name, None) for m in model.modules()
                if getattr(m, "integer_forward", None) is not None for name in ("weight_t", "weight_deq")]
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def peak_allocated_bytes(run: Callable[[], object]) -> int:
    """Peak of (allocated - freed) bytes during ``run()``, from torch.profiler memory events."""
    from gaqtool.profiling import profile_cpu

    with profile_cpu(profile_memory=True) as prof:
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


def build_configs(fp32, quantized: list, configs: list[str], fp32_e3nn=None) -> tuple[dict, dict]:
    """{name: (model, autocast)} of gaqtool's configurations ('sevenn' is built per system) and
    the integer-kernel reports of the int8 configurations. ``quantized``: the quantized models;
    with several, their configurations are named '<config>:<k>' (k = 1, 2, ...)."""
    from gaqtool.config import ForceMode
    from gaqtool.kernels import enable_integer_kernels
    from gaqtool.quant.apply import set_force_mode

    models, reports = {}, {}
    for config in ["fp32"] + [c for c in configs if c not in ("fp32", "sevenn")]:
        if config in ("fp32", "bf16", "fp32-e3nn"):
            source = fp32_e3nn if config == "fp32-e3nn" else fp32
            models[config] = (_freeze(copy.deepcopy(source)), config == "bf16")
            continue
        for k, q in enumerate(quantized, start=1):
            name = config if len(quantized) == 1 else f"{config}:{k}"
            model = _freeze(copy.deepcopy(q))
            if config == "dynamics":
                set_force_mode(model, ForceMode.CONSERVATIVE)  # md's and the calculator's default
            if config.startswith("int8"):
                # int8: the API's default (measured per layer shape, size and direction);
                # int8-all / int8-eager: every eligible call, whatever int8 GEMMs cost here
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", RuntimeWarning)  # the kernels' own notes
                    reports[name] = enable_integer_kernels(
                        model, compile=(config != "int8-eager"),
                        require_speedup=(config == "int8")).to_dict()
                for w in caught:
                    if issubclass(w.category, RuntimeWarning):
                        warn(f"{name}: {w.message}")
            models[name] = (model, False)
    return models, reports


def system_calls(models: dict, batch, atoms, sevenn_source) -> dict[str, Callable]:
    """{config: energy + forces call} on one system; sevenn's own first where it applies."""
    calls = {}
    if sevenn_source is not None and atoms is not None:
        from gaqtool.backends.sevenn_reference import sevenn_energy_forces_call

        calls["sevenn"] = sevenn_energy_forces_call(*sevenn_source, atoms)
    for name, (model, autocast) in models.items():
        dynamics = name.split(":")[0] == "dynamics"
        calls[name] = energy_forces_call(model, batch, autocast, dynamics)
    return calls


def _first_calls(calls: dict[str, Callable], warmup: int, system: str, on_step) -> tuple[dict, dict]:
    """Run each configuration once (timed: first-call cost) and ``warmup - 1`` more times;
    returns ({config: row}, {config: (energies, forces)}). A failure is recorded, not raised."""
    rows, outputs = {}, {}
    for name, run in calls.items():
        if on_step:
            on_step(f"{name} on {system}")
        row = {"config": name, "system": system}
        try:
            started = time.perf_counter()
            outputs[name] = run()
            row["first_call_s"] = time.perf_counter() - started
            for _ in range(max(0, warmup - 1)):
                run()
            row["status"] = "ok"
        except RuntimeError as exc:
            row.update(status=f"failed: {str(exc).splitlines()[0][:160]}", median_s=None)
        rows[name] = row
    return rows, outputs


def run_benchmark(fp32, quantized, systems, configs: list[str], repeats: int, warmup: int,
                  memory: bool, on_step: Callable[[str], None] | None = None, sevenn_source=None,
                  fp32_e3nn=None) -> dict:
    """Every configuration on every system: first call (accuracy vs the reference, compile
    time), warm-up, round-robin timing, then profiled calls for memory and for the fused
    convolution's FLOP/s. The reference is 'sevenn' where it runs, else 'fp32'.
    ``sevenn_source``: (checkpoint, modal) of sevenn's own model, or None."""
    from gaqtool.kernels.roofline import convolution_flops, convolution_seconds

    models, reports = build_configs(fp32, quantized, configs, fp32_e3nn)
    sevenn_source = sevenn_source if "sevenn" in configs else None
    results = []
    for system, batch, _, atoms in systems:
        calls = system_calls(models, batch, atoms, sevenn_source)
        rows, outputs = _first_calls(calls, warmup, system, on_step)
        reference = "sevenn" if "sevenn" in outputs else "fp32"
        e0, f0 = outputs.get(reference, next(iter(outputs.values()), (None, None)))
        ok = [name for name in calls if rows[name]["status"] == "ok"]
        model_of = {n: getattr(calls[n], "model", None) or models[n][0] for n in ok}
        for name in ok:
            energies, forces = outputs[name]
            model = model_of[name]
            rows[name].update(reference=reference,
                              model_bytes=model_tensor_bytes(model),
                              max_abs_energy_error_meV=float((energies - e0).abs().max()) * 1e3,
                              max_abs_force_error_meV_per_A=float((forces - f0).abs().max()) * 1e3)
        for name, times in time_round_robin({n: calls[n] for n in ok}, repeats).items():
            rows[name].update(median_s=statistics.median(times), min_s=min(times), repeats=repeats)
        for name in ok:
            row, model = rows[name], model_of[name]
            if memory:
                row["peak_activation_bytes"] = peak_allocated_bytes(calls[name])
                row["peak_bytes"] = row["model_bytes"] + row["peak_activation_bytes"]
            flops = convolution_flops(model, len(batch.edge_src))
            if flops:
                seconds = convolution_seconds(calls[name])
                row["convolution"] = {"flops": flops, "seconds": seconds,
                                      "flop_per_s": flops / seconds if seconds > 0 else None}
        results.extend(rows.values())
    out = {"results": results, "ratios": _ratios(results), "integer_kernels": reports}
    if reports:
        from gaqtool.kernels.int8 import int_mm_speedup

        out["int8_gemm_speedup"] = int_mm_speedup("cpu")
    return out


def _ratios(results: list[dict]) -> dict:
    """speedup = reference median / config median; memory = config peak bytes / reference
    peak bytes (the reference: 'sevenn' where it ran, else 'fp32'); int8 rows also get
    speedup_vs_fake_quant (the gain of the kernels alone)."""
    ok = {(r["config"], r["system"]): r for r in results if r["status"] == "ok"}
    ratios: dict = {}
    for (config, system), r in ok.items():
        b = ok.get((r["reference"], system))
        if config == r["reference"] or b is None:
            continue
        entry = {"speedup": b["median_s"] / r["median_s"], "reference": r["reference"]}
        if "peak_bytes" in r and "peak_bytes" in b:
            entry["memory"] = r["peak_bytes"] / b["peak_bytes"]
        fake = ok.get(("fake-quant", system))
        if config.startswith("int8") and fake is not None:
            entry["speedup_vs_fake_quant"] = fake["median_s"] / r["median_s"]
        ratios.setdefault(config, {})[system] = entry
    return ratios


def _recorded_parent(quantized):
    """The FP32 parent a quantized file records (named model, checkpoint with the recorded
    SHA-256, or the embedded model), or an InputError that says where to find one."""
    from gaqtool.cli.parents import recorded_parent
    from gaqtool.io.checkpoint import default_model_path

    parent, how = recorded_parent(quantized)
    if parent is None:
        raise InputError(f"bench {quantized.path.name} needs its FP32 parent: {how}",
                         hint=f"gaqtool bench FP32_MODEL {quantized.path} (the embedded model is "
                              f"{default_model_path()})")
    log.print(f"[dim]FP32 parent: {how}[/]", highlight=False)
    return parent


def _load_models(fp32_path: Optional[Path], quantized_paths: list[Path], configs: list[str],
                 force_mode=None, modal=None) -> dict:
    """The FP32 model, the configurations (``configs``, or the default for the model's kind),
    the quantized models (files, or gaq w4a8 made on the fly), and for SevenNet models
    sevenn's own source and, if asked, the FP32 model on e3nn's convolution."""
    from gaqtool.config import QuantConfig
    from gaqtool.data.spec import default_spec, resolve_data
    from gaqtool.io.loading import load_model
    from gaqtool.workflow import quantize_loaded

    fp32 = load_model(fp32_path, modal=modal)
    if fp32.kind != "fp32" and not quantized_paths:  # `bench QUANTIZED`: its recorded parent
        fp32, quantized_paths = _recorded_parent(fp32), [fp32_path]
    elif fp32.kind != "fp32":
        raise InputError(f"{fp32.path} is a quantized file, the first argument is the FP32 model",
                         hint="gaqtool bench FP32_MODEL.pt [QUANTIZED.safetensors ...]")
    is_sevenn = fp32.info.get("backend") == "sevenn"
    configs = configs or (SEVENN_DEFAULT_CONFIGS if is_sevenn else DEFAULT_CONFIGS)
    wrong = [c for c in configs if c in SEVENN_ONLY and not is_sevenn]
    if wrong:
        raise InputError(f"--config {', '.join(wrong)} needs a SevenNet model, got {fp32.path.name}",
                         hint="pass sevenn:7net-0 (or another SevenNet source) as the FP32 model")
    found = {"fp32": fp32, "configs": configs, "quantized": [], "notes": [], "fp32_e3nn": None,
             "sevenn_source": (fp32.path, fp32.model.config.get("modal")) if is_sevenn else None}
    if "fp32-e3nn" in configs:
        found["fp32_e3nn"] = load_model(fp32_path, modal=modal, e3nn_convolution=True).model
    if not quantized_paths:
        config = QuantConfig.from_preset("w4a8", **({"force_mode": force_mode} if force_mode else {}))
        calibration = resolve_data(default_spec(fp32.molecule), "train", None, fp32.molecule)
        quantized, _ = quantize_loaded(fp32.model, config, calibration.frames)
        found["quantized"].append(quantized)
        found["notes"].append(f"gaq w4a8, {config.force_mode.value} forces, quantized on the fly "
                              f"({calibration.description})")
    def architecture(config: dict) -> dict:  # the energy correction moves the energy offset
        return {k: v for k, v in config.items() if k not in ("energy_shift", "energy_offset")}

    for path in quantized_paths:
        loaded = load_model(path, force_mode=force_mode)
        if loaded.kind != "quantized":
            raise InputError(f"{loaded.path} is not a quantized file",
                             hint="pass .safetensors files written by `gaqtool quantize`")
        if architecture(loaded.model.config) != architecture(fp32.model.config):
            log.print(f"[yellow]warning:[/] {loaded.path}'s model config differs from the FP32 model's")
        found["quantized"].append(loaded.model)
        found["notes"].append(f"{loaded.label} from {loaded.path}")
    return found


def _short(value: float) -> str:
    """A positive number in at most 6 characters: 1 decimal below 1000, none above."""
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _render(data: dict) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"energy + forces, {data['threads']} threads, {data['cpu']}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("system", "config", "ms", "x ref", "MB", "mem", "dE", "dF"):
        text = col in ("system", "config")
        table.add_column(col, justify="left" if text else "right", no_wrap=True,
                         overflow="fold" if text else "ellipsis")
    failures, convolution = [], []
    for r in data["results"]:
        ratio = data["ratios"].get(r["config"], {}).get(r["system"], {})
        if r["status"] != "ok":
            failures.append(f"{r['config']} on {r['system']}: {r['status']}")
            table.add_row(r["system"], r["config"], "failed", "", "", "", "", "")
            continue
        table.add_row(r["system"], r["config"], _short(r["median_s"] * 1e3),
                      f"{ratio['speedup']:.2f}x" if ratio else "ref",
                      _short(r["peak_bytes"] / 1e6) if "peak_bytes" in r else "-",
                      f"{ratio['memory']:.2f}x" if "memory" in ratio else ("ref" if not ratio else "-"),
                      f"{r['max_abs_energy_error_meV']:.2g}", f"{r['max_abs_force_error_meV_per_A']:.2g}")
        conv = r.get("convolution")
        if conv and conv.get("flop_per_s"):
            shares = [f"{conv['flop_per_s'] / peak:.1%} of {what}" for what, peak in
                      (("nominal peak", data["peak"]["nominal_flop_per_s"]),
                       ("sgemm", data["peak"]["gemm_flop_per_s"])) if peak]
            convolution.append(f"{r['system']}, {r['config']}: {conv['flop_per_s'] / 1e9:.2f} GFLOP/s "
                               f"({conv['seconds'] * 1e3:.0f} ms; {', '.join(shares)})")
    console.print(table)
    for failure in failures:
        console.print(f"[yellow]{failure}[/]", highlight=False, soft_wrap=False)
    references = sorted({r.get("reference", "fp32") for r in data["results"] if r["status"] == "ok"})
    quantized = "; ".join(f"{k}: {note}" for k, note in enumerate(data["quantized"], start=1)) \
        if len(data["quantized"]) > 1 else data["quantized"][0]
    console.print(f"[dim]quantized: {quantized}. Allocator: {data.get('allocator', 'default malloc')}. "
                  f"ms: median of {data['repeats']} runs after "
                  f"{data['warmup']} warm-up; reference (ref): {' or '.join(references)}"
                  f"{' = sevenn' + chr(39) + 's own FP32 calculator model' if 'sevenn' in references else ''}; "
                  "x ref: speedup; MB: model tensors + peak allocated during one call; mem: vs ref; "
                  "dE (meV, total), dF (meV/A): max deviation from ref[/]", highlight=False)
    speedup = data.get("int8_gemm_speedup")
    if speedup is not None:
        from gaqtool.kernels.int8 import MIN_INT8_SPEEDUP, SPEED_PROBE_SHAPE

        verdict = ("" if speedup >= MIN_INT8_SPEEDUP else
                   f": below {MIN_INT8_SPEEDUP}x, so the int8 configuration switches nothing "
                   "(int8-all runs it anyway)")
        console.print(f"[dim]int8 GEMM ({'x'.join(map(str, SPEED_PROBE_SHAPE))}) measures "
                      f"{speedup:.2g}x float32 here{verdict}[/]", highlight=False)
    if convolution:
        peak = data["peak"]
        console.print(f"[dim]fused convolution, forward + backward ({peak['how']}):[/]", highlight=False)
        for line in convolution:
            console.print(f"[dim]  {line}[/]", highlight=False)


@app.command(short_help="Latency and peak memory: FP32 vs quantized (and sevenn).")
def bench(
    fp32_model: Annotated[Optional[Path], typer.Argument(help="FP32 model: checkpoint (.pt, SevenNet .pth) or named model (sevenn:7net-0); or a quantized file alone, timed against the FP32 parent it records. Default: the embedded aspirin model.", show_default=False)] = None,
    quantized_files: Annotated[Optional[List[Path]], typer.Argument(help="Quantized .safetensors files of that model (several: configurations named fake-quant:1, fake-quant:2, ...). Default: quantize it on the fly (gaq w4a8) in memory.", show_default=False)] = None,
    configs: Annotated[Optional[List[str]], typer.Option("--config", help=f"Configuration to run; repeatable; one of {', '.join(CONFIGS)} (fp32 always runs; sevenn and fp32-e3nn for SevenNet models). Default: fp32, bf16, fake-quant, dynamics, int8; for SevenNet models sevenn, fp32, fake-quant, dynamics.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per configuration and system (median reported).")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first (compilation happens here).")] = 2,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Molecules in the batched system.")] = 32,
    cluster_molecules: Annotated[int, typer.Option("--cluster-molecules", min=1, help="Aspirins in the grid system (48 -> 1008 atoms; not for universal models).")] = 48,
    spacing: Annotated[float, typer.Option("--spacing", min=1.0, help="Grid spacing of the cluster system, Angstrom.")] = 8.0,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Also measure peak memory (one profiled call each).")] = True,
    keep_memory: Annotated[bool, typer.Option("--keep-freed-memory/--default-malloc", help="Keep freed memory in the process for reuse, as md, eval and GAQCalculator do (gaqtool.allocator), or time with the C library's default malloc (where nothing earlier in the process set it).")] = True,
    force_mode: ForceModeOverrideOption = None,
    modal: ModalOption = None,
    json_output: JsonOption = False,
) -> None:
    """Median latency and peak memory of energy + forces: sevenn's own (SevenNet models), FP32,
    bf16, fake-quant and int8 kernels, with the fused convolution's FLOP/s."""
    import torch

    from gaqtool.allocator import freed_memory_kept, keep_freed_memory
    from gaqtool.data.frames import read_npz
    from gaqtool.data.spec import sample_path
    from gaqtool.kernels.roofline import gemm_peak_flops, nominal_peak_flops

    chosen = list(dict.fromkeys(configs or []))
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown:
        raise InputError(f"unknown --config {', '.join(unknown)}", hint=f"choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(threads)
    if keep_memory:
        keep_freed_memory()
    allocator = "freed memory kept (mallopt)" if freed_memory_kept() else "default malloc"
    found = _load_models(fp32_model, list(quantized_files or []), chosen, force_mode, modal)
    fp32, chosen = found["fp32"], found["configs"]
    frames = read_npz(sample_path("test"))
    if fp32.molecule is None:  # a universal model
        systems = universal_systems(frames, fp32.model.cutoff, batch_size)
    else:
        systems = bench_systems(frames, fp32.model.cutoff, batch_size, cluster_molecules, spacing)
    on_step = None if json_output else (lambda s: log.print(f"[dim]running {s}[/]", highlight=False))
    cpu = cpu_description()
    data = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "allocator": allocator, "fp32_model": str(fp32.path), "quantized": found["notes"], "repeats": repeats, "warmup": warmup,
            "systems": [{"name": n, "atoms": len(b.numbers), "edges": len(b.edge_src), "description": d}
                        for n, b, d, _ in systems],
            "peak": {"nominal_flop_per_s": nominal_peak_flops(threads, "avx512f" in cpu),
                     "gemm_flop_per_s": gemm_peak_flops(),
                     "how": f"nominal: {threads} threads x clock x {64 if 'avx512f' in cpu else 32} "
                            "FP32 FLOP/cycle; sgemm: best 1024^3 torch.mm here"}}
    data.update(run_benchmark(fp32.model, found["quantized"], systems, chosen, repeats, warmup, memory,
                              on_step, found["sevenn_source"], found["fp32_e3nn"]))
    if json_output:
        print_json(data)
        return
    _render(data)
