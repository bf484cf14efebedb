"""`gaqtool quantize`: options -> QuantConfig -> quantize + calibrate -> report -> safetensors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, List, Optional

import typer
from rich.markup import escape

from gaqtool.cli.app import app
from gaqtool.cli.console import (clamped_count, console, log, print_json, progress, progress_enabled,
                                 training_callback, warn)
from gaqtool.cli.options import (DeviceOption, E3nnConvolutionOption, JsonOption, ModalOption, Rmd17DirOption,
                                 SeedOption, ThreadsOption, TrustPickleOption, use_threads)
from gaqtool.config import (DirectionMode, ForceMode, Method, ObserverKind, QATTargets, QuantConfig, WeightClip,
                            WeightRounding)
from gaqtool.data.spec import (UNIVERSAL, check_spec, composition_mismatch, default_spec, element_symbols,
                               resolve_data, uncalibrated_elements)
from gaqtool.errors import DataError, InputError
from gaqtool.io.atomic import atomic_write, check_writable
from gaqtool.report import render_quantize_report

if TYPE_CHECKING:  # torch-heavy; imported where used, so that --help stays fast
    from gaqtool.data.spec import DataSelection
    from gaqtool.qat import QATOptions

EVAL_FRAMES = 200
LEE_FRAMES = 16

ModelArgument = Annotated[Optional[Path], typer.Argument(
    help="FP32 model to quantize: a gaqtool checkpoint (.pt), a SevenNet checkpoint (.pth) or a "
         "named model (sevenn:7net-0, sevenn:7net-mf-0, sevenn:7net-l3i5). Default: the embedded "
         "aspirin model.", show_default=False)]


def _keep_patterns(values: list[str] | None) -> tuple[str, ...] | None:
    """--keep-fp32 values -> QuantConfig.keep_fp32: None (not given) keeps the config's default,
    'none' keeps nothing."""
    if not values:
        return None
    return () if [v.strip().lower() for v in values] == ["none"] else tuple(values)


def build_config(bits, method, group_size, observer, percentile, direction_mode, direction_bits,
                 codebook_size, calib_frames, keep_fp32, force_mode, seed, energy_correction=True,
                 weight_clip=WeightClip.MSE, weight_rounding=WeightRounding.GPTQ,
                 small_fan_in_bits=None, small_fan_in=16, keep_wide=None) -> QuantConfig:
    """QuantConfig from command-line values (shared with QAT)."""
    return QuantConfig.from_preset(
        bits, method=method, group_size=group_size, observer=observer, percentile=percentile,
        weight_clip=weight_clip, weight_rounding=weight_rounding,
        direction_mode=direction_mode, direction_bits=direction_bits, codebook_size=codebook_size,
        calib_frames=calib_frames, keep_fp32=_keep_patterns(keep_fp32), force_mode=force_mode, seed=seed,
        energy_correction=energy_correction, small_fan_in_bits=small_fan_in_bits, small_fan_in=small_fan_in,
        keep_wide=_keep_patterns(keep_wide))


def _fine_tune(loaded, config, calib, train, val, bar, options: QATOptions, start):
    """Run QAT from the PTQ model ``start`` (calibrated once, fine-tuned in place) on the
    resolved ``train`` / ``val`` selections; returns (converted model, summary for the report)."""
    from gaqtool import distributed
    from gaqtool.qat import run_qat

    steps = options.epochs * -(-(len(train.frames) // distributed.world_size()) // options.batch_size)
    task = bar.add_task("QAT", total=steps, info="")
    on_step = training_callback(bar, task, "QAT epoch")

    result = run_qat(loaded.model, config, train.frames, val.frames, calib.frames, options, on_step, start)
    summary = {"options": options.__dict__, "train_data": train.description, "best_epoch": result.best_epoch,
               "best_val": result.best_val, "seconds": result.seconds, "processes": distributed.world_size(),
               "history": result.history}
    return result.model, summary


def _write_outputs(output: Path, report_path: Path | None, write_model, started: float) -> dict:
    """All or nothing: the model goes to a staging file next to ``output``, then the --report
    JSON is written, and only then is the model moved into place. If the report fails, no model
    file is left (an existing ``output`` is untouched). Returns the completed report."""
    staged = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        report = write_model(staged)
        report["output"] = str(output)
        report["seconds"]["total"] = time.perf_counter() - started
        if report_path:
            atomic_write(report_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2, default=float)))
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
    return report


def _validation_data(spec: str | None, calib_spec: str, rmd17_dir, molecule, calib_frames, config,
                     eval_set, val_frames: int | None) -> DataSelection:
    """The frames an error budget is checked on: ``--val-data`` or the validation part of the
    calibration data; refused when they share a structure with calibration or test."""
    from gaqtool.data.frames import shared_structures
    from gaqtool.workflow import calibration_subset

    if spec is None and not (calib_spec in ("rmd17", UNIVERSAL) or calib_spec.startswith("rmd17:")):
        raise InputError("--max-error with a calibration file needs --val-data",
                         hint="give validation frames that are neither calibration nor test frames")
    selection = resolve_data(spec or calib_spec, "val", rmd17_dir, molecule)
    if val_frames and val_frames < len(selection.frames):
        selection.frames = selection.frames.subset(range(val_frames))
        selection.description += f", the first {val_frames}"
        selection.note += f" (the first {val_frames})"
    for other, name in ((calibration_subset(config, calib_frames), "calibration"), (eval_set, "test")):
        shared = shared_structures(selection.frames, other)
        if shared:
            raise DataError(f"{shared} validation structure(s) are also {name} structures",
                            hint="give --val-data frames disjoint from calibration and test")
    return selection


def _stage_bars(bar, json_output: bool):
    """``search_bit_map``'s progress: one bar per stage of the search (one line per stage
    when bars are off, e.g. in a log file; nothing in --json mode)."""
    def stage(description: str, total: int):
        if not progress_enabled(json_output) and not json_output:
            console.print(f"[dim]{description}: {total} step{'s' if total != 1 else ''}[/]", highlight=False)
        task = bar.add_task(description, total=total, info="")
        return lambda n=1: bar.update(task, advance=n)

    return stage


@app.command(short_help="Quantize an FP32 model to a bit-packed file, with a report.")
def quantize(
    model: ModelArgument = None,
    bits: Annotated[str, typer.Option("--bits", help="Bit widths: wXaY (X in 2,4,8; Y in 8,16), or wX for weight-only.")] = "w4a8",
    output: Annotated[Path, typer.Option("--output", "-o", help="Quantized safetensors file to write.")] = Path("quantized.safetensors"),
    method: Annotated[Method, typer.Option("--method", help="gaq: MDDQ activations; naive: per-tensor min-max on every tensor; weight-only: activations stay FP32.")] = Method.GAQ,
    group_size: Annotated[Optional[int], typer.Option("--group-size", min=1, help="Weight scales per group of this many input channels (default: one scale per output channel).")] = None,
    observer: Annotated[ObserverKind, typer.Option("--observer", help="Calibration statistic for activation ranges.")] = ObserverKind.MINMAX,
    percentile: Annotated[float, typer.Option("--percentile", help="Percentile for --observer percentile.")] = 99.99,
    weight_clip: Annotated[Optional[WeightClip], typer.Option("--weight-clip", help="Per-channel weight scales: mse (the clipping that minimises each channel's rounding error) or minmax. Default: mse, minmax as the start of QAT. --method naive: one min-max scale per tensor.", show_default=False)] = None,
    weight_rounding: Annotated[WeightRounding, typer.Option("--weight-rounding", help="How weights are rounded to their grid: gptq (error-compensating, fitted so that each layer's outputs and their derivatives with respect to the atom positions on the calibration molecules change least) or nearest. With --qat-epochs the latent weights start from these rounded ones.")] = WeightRounding.GPTQ,
    direction_mode: Annotated[DirectionMode, typer.Option("--direction-mode", help="MDDQ direction: component grid + renormalisation (global axes), frame (the same grid in an equivariant local frame per atom/edge built from its own l=1 features; rounding commutes with rotations), spherical codebook (l=1), or fp16.")] = DirectionMode.FRAME,
    direction_bits: Annotated[int, typer.Option("--direction-bits", min=1, max=16, help="Bits per direction component for --direction-mode component and frame.")] = 8,
    codebook_size: Annotated[int, typer.Option("--codebook-size", min=4, help="Points of the spherical codebook for --direction-mode codebook.")] = 256,
    calib_frames: Annotated[int, typer.Option("--calib-frames", min=1, help="Calibration molecules.")] = 32,
    calib_data: Annotated[Optional[str], typer.Option("--calib-data", help="Calibration frames: rmd17:<molecule> (train split) or a file. Default: the model's molecule.")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="Held-out frames for the report: rmd17:<molecule> (test split) or a file. Default: the model's molecule.")] = None,
    eval_frames: Annotated[int, typer.Option("--eval-frames", min=1, help="Held-out frames used for the report's MAE.")] = EVAL_FRAMES,
    lee_frames: Annotated[int, typer.Option("--lee-frames", min=1, help="Frames for the LEE check.")] = LEE_FRAMES,
    lee_rotations: Annotated[int, typer.Option("--lee-rotations", min=1, help="Random rotations per LEE frame.")] = 4,
    keep_fp32: Annotated[Optional[List[str]], typer.Option("--keep-fp32", help="Modules to keep in FP32, repeatable: a role the model's backend declares (role:species_embedding, role:readout, role:radial) or an fnmatch pattern of module paths (see --show-modules); 'none' quantizes every module. Default: role:species_embedding (its 4-bit error no later layer can undo) for gaq and weight-only, none for naive.", show_default=False)] = None,
    keep_wide: Annotated[Optional[List[str]], typer.Option("--keep-wide", help="Modules whose weights use --small-fan-in-bits (8) whatever their fan-in, repeatable: a role (e.g. role:readout) or a path pattern. Default: none.", show_default=False)] = None,
    small_fan_in_bits: Annotated[Optional[int], typer.Option("--small-fan-in-bits", help="Weight bits of layers with at most --small-fan-in inputs per output (here: the first layer of each radial MLP, 8 Bessel functions in), whose rounding errors do not average out and whose derivatives are the forces; 0: same bits as every other layer. Default: 8 for gaq and weight-only, 0 for naive.", show_default=False)] = None,
    small_fan_in: Annotated[int, typer.Option("--small-fan-in", min=1, help="Fan-in threshold of --small-fan-in-bits.")] = 16,
    force_mode: Annotated[ForceMode, typer.Option("--force-mode", help="Forces of activation-quantized models, stored in the file: ste (straight through the rounding, what eval and lee-check measure; not conservative) or conservative (gradient of the model with activation rounding off). md and GAQCalculator use conservative unless told otherwise.")] = ForceMode.STE,
    energy_correction: Annotated[bool, typer.Option("--energy-correction/--no-energy-correction", help="Shift the per-atom energy so the quantized model's mean energy on the calibration frames equals the FP32 parent's (label-free bias correction).")] = True,
    qat_epochs: Annotated[int, typer.Option("--qat-epochs", min=0, help="Quantization-aware fine-tuning epochs after calibration (0: post-training quantization only).")] = 0,
    data: Annotated[Optional[str], typer.Option("--data", help="QAT training data: rmd17:<molecule> (950 train / 50 val of split 01) or a file. Default: the model's molecule.")] = None,
    vector_warmup: Annotated[int, typer.Option("--vector-warmup", min=0, help="QAT epochs before l>0 activations are quantized (scalars are quantized from the start).")] = 1,
    activation_warmup: Annotated[int, typer.Option("--activation-warmup", min=0, help="QAT epochs with no activation quantized at all (weights only) before the scalar and, after --vector-warmup, the l>0 activations are switched on.")] = 0,
    lee_weight: Annotated[float, typer.Option("--lee-weight", min=0.0, help="Weight of the QAT equivariance penalty |F(Rx) - R F(x)|^2 with a random rotation per step (0: off).")] = 0.0,
    qat_lr: Annotated[float, typer.Option("--qat-lr", min=0.0, help="Peak learning rate of QAT (Adam, cosine schedule).")] = 5e-4,
    qat_batch_size: Annotated[int, typer.Option("--qat-batch-size", min=1, help="Molecules per QAT step.")] = 8,
    qat_targets: Annotated[QATTargets, typer.Option("--qat-targets", help="What QAT fits: teacher (the FP32 parent's energies and forces on the training frames: distillation) or labels (the DFT reference). Validation always uses the labels.")] = QATTargets.TEACHER,
    qat_energy_weight: Annotated[float, typer.Option("--qat-energy-weight", min=0.0, help="Weight of the per-atom energy error (MSE, eV^2) next to the force error (MSE, (eV/A)^2) in the QAT loss and checkpoint selection.")] = 1.0,
    qat_ema_decay: Annotated[float, typer.Option("--qat-ema-decay", min=0.0, max=0.9999, help="Per-step decay of the moving average of the QAT weights that is validated and written (0.9: about the last 10 steps; 0.99: about 100).")] = 0.9,
    tangent_projection: Annotated[bool, typer.Option("--tangent-projection/--no-tangent-projection", help="QAT: straight-through on the unit direction, so direction gradients are projected onto the sphere's tangent space.")] = True,
    max_error: Annotated[Optional[str], typer.Option("--max-error", help="Error budget that chooses bits per module and grid: ratios to FP32's error (energy=1.10,forces=1.10) or deviations from FP32 (forces=5meV/A,energy=1meV/atom). Unmet at W8A16: error, no file.", show_default=False)] = None,
    best_effort: Annotated[bool, typer.Option("--best-effort", help="With --max-error: write the closest model even if the budget is not met.")] = False,
    val_data: Annotated[Optional[str], typer.Option("--val-data", help="Validation frames for --max-error (disjoint from calibration and test). Default: the calibration data's val part.", show_default=False)] = None,
    val_frames: Annotated[Optional[int], typer.Option("--val-frames", min=1, help="Validation frames used by --max-error (default: all).", show_default=False)] = None,
    sensitivity_frames: Annotated[Optional[int], typer.Option("--sensitivity-frames", min=1, help="With --max-error: calibration frames the sensitivities are measured on (default: all).", show_default=False)] = None,
    report_path: Annotated[Optional[Path], typer.Option("--report", help="Also write the report as JSON to this file.")] = None,
    show_modules: Annotated[bool, typer.Option("--show-modules", help="List every module with its bits.")] = False,
    rmd17_dir: Rmd17DirOption = None,
    trust_pickle: TrustPickleOption = False,
    modal: ModalOption = None,
    e3nn_convolution: E3nnConvolutionOption = False,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
    device: DeviceOption = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Quantize an FP32 equivariant potential (GAQ / MDDQ) to a bit-packed safetensors file with a report.

    With --max-error the bits are chosen per module and per activation grid to meet an error
    budget. With --qat-epochs N the calibrated model is fine-tuned (quantization-aware, LSQ step sizes,
    vector warm-up) before it is written; under torchrun the fine-tuning is data-parallel.
    """
    from gaqtool.device import place_model, select_device

    target = select_device(device)  # before any work
    check_writable(output, "--output")
    if output.suffix != ".safetensors":
        raise InputError(f"--output must end in .safetensors, got '{output}'")
    if report_path is not None:
        check_writable(report_path, "--report")
    for option, spec in (("--calib-data", calib_data), ("--eval-data", eval_data), ("--data", data)):
        check_spec(spec, option)
    if weight_clip is None:
        weight_clip = WeightClip.MINMAX if qat_epochs else WeightClip.MSE
    config = build_config(bits, method, group_size, observer, percentile, direction_mode, direction_bits,
                          codebook_size, calib_frames, keep_fp32, force_mode, seed, energy_correction,
                          weight_clip, weight_rounding, small_fan_in_bits, small_fan_in, keep_wide)
    from gaqtool.quant.budget import check_budget, parse_budget

    budget = parse_budget(max_error) if max_error is not None else None
    if best_effort and budget is None:
        raise InputError("--best-effort needs --max-error")

    from gaqtool import distributed
    from gaqtool.io.loading import load_model
    from gaqtool.qat import QATOptions
    from gaqtool.quant.bitmap import bit_map
    from gaqtool.quant.mixed_precision import search_bit_map
    from gaqtool.workflow import (FORCE_MODE_NOTE, calibration_subset, evaluate_pair, quantize_loaded, size_summary,
                                  write_quantized)

    threads = use_threads(threads)
    started = time.perf_counter()
    loaded = load_model(model, trust_pickle, modal=modal, e3nn_convolution=e3nn_convolution)
    place_model(loaded.model, target)
    if loaded.kind != "fp32":
        raise InputError(f"{loaded.path} is already quantized", hint="quantize the FP32 checkpoint (.pt)")
    molecule = loaded.molecule
    calib = resolve_data(calib_data or default_spec(molecule), "train", rmd17_dir, molecule)
    evaluation = resolve_data(eval_data or default_spec(molecule), "test", rmd17_dir, molecule)
    train = val = None
    if qat_epochs:  # resolved now: a bad --data fails before calibration, not after it
        distributed.init_from_env()
        train = resolve_data(data or default_spec(molecule), "train", rmd17_dir, molecule)
        val = resolve_data(data or default_spec(molecule), "val", rmd17_dir, molecule)
    n_calib = clamped_count("--calib-frames", config.calib_frames, len(calib.frames), "the calibration data",
                       QuantConfig.calib_frames)
    n_eval = clamped_count("--eval-frames", eval_frames, len(evaluation.frames), "the evaluation data",
                      EVAL_FRAMES)
    eval_set = evaluation.frames.subset(range(n_eval))
    lee_frames = clamped_count("--lee-frames", lee_frames, n_eval, "the evaluation set", LEE_FRAMES)
    for role, selection in (("calibration", calib), ("evaluation", evaluation), ("QAT", train)):
        mismatch = selection is not None and composition_mismatch(selection.frames, molecule)
        if mismatch:
            warn(f"{role} data: {mismatch}")
    calibrated = element_symbols(calibration_subset(config, calib.frames).numbers)
    gap = uncalibrated_elements(calibrated, eval_set.numbers)
    if gap:
        warn(f"evaluation data: {gap}")
    validation = (_validation_data(val_data, calib_data or default_spec(molecule), rmd17_dir, molecule,
                                   calib.frames, config, eval_set, val_frames) if budget else None)
    if not json_output:
        log.print(f"[dim]calibration: {escape(calib.note)}\nevaluation: {escape(evaluation.note)}[/]"
                  + (f"\n[dim]validation: {escape(validation.note)}[/]" if validation else ""), highlight=False)
    qat_summary = search = None
    with progress(json_output) as bar:
        if budget:
            search = search_bit_map(loaded.model, config, calib.frames, validation.frames, budget, best_effort,
                                    _stage_bars(bar, json_output), sensitivity_frames)
            quantized, plan, config = search.model, search.plan, search.config
        else:
            task = bar.add_task("calibrating", total=n_calib, info="")
            quantized, plan = quantize_loaded(loaded.model, config, calib.frames,
                                              lambda n: bar.update(task, advance=n))
        if qat_epochs:
            quantized, qat_summary = _fine_tune(loaded, config, calib, train, val, bar,
                                                QATOptions(epochs=qat_epochs, vector_warmup=vector_warmup,
                                                           activation_warmup=activation_warmup,
                                                           lee_weight=lee_weight, tangent_projection=tangent_projection,
                                                           learning_rate=qat_lr, batch_size=qat_batch_size, seed=seed,
                                                           targets=qat_targets.value,
                                                           energy_weight=qat_energy_weight,
                                                           ema_decay=qat_ema_decay),
                                                quantized)
            if not distributed.is_main():
                return
        t_quant = time.perf_counter() - started
        task = bar.add_task("evaluating", total=2 * len(eval_set), info="FP32 and quantized")
        metrics = evaluate_pair(loaded.model, quantized, eval_set, lee_frames, lee_rotations, seed,
                                lambda n: bar.update(task, advance=n))
    report = {
        "bits": config.bits_label, "method": config.method.value, "config": config.to_dict(),
        "source": {"path": str(loaded.path), "kind": loaded.kind, "name": loaded.info.get("source"),
                   "modal": modal},
        "calibration": {"frames": n_calib, "data": calib.description, "elements": calibrated},
        "evaluation": {"frames": len(eval_set), "data": evaluation.description},
        **metrics,
        "size": size_summary(loaded, quantized),
        "bit_map": bit_map(plan.entries).to_dict(),
        "modules": [{"path": p, **e} for p, e in plan.entries.items()],
        "unquantized_parameters": plan.unquantized_parameters,
        "force_mode": (f"{config.force_mode.value}: {FORCE_MODE_NOTE[config.force_mode.value]}"
                       if config.quantizes_activations else
                       "exact: forces are -dE/dx by autograd in every command (weight-only: no "
                       "activation rounding)"),
        "seconds": {"quantize_calibrate": t_quant},
    }
    if qat_summary:
        report["qat"] = qat_summary
    if search:
        report["budget"] = {**search.to_report(budget), "validation_data": validation.description,
                            "test": check_budget(budget, metrics["accuracy"], metrics["deviation"])}
    report = _write_outputs(output, report_path, lambda path: write_quantized(
        path, loaded, quantized, plan, config, report), started)
    if json_output:
        print_json(report)
        return
    render_quantize_report(report, console, show_modules)
    log.print(f"wrote {output} in {report['seconds']['total']:.1f} s", highlight=False)
