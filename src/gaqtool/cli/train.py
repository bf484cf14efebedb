"""`gaqtool train`: train the reference FP32 potential on energies and forces."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from gaqtool.architecture import DEFAULT_CONFIG
from gaqtool.cli.app import app
from gaqtool.cli.console import console, log, print_json, progress, training_callback
from gaqtool.cli.options import DeviceOption, JsonOption, Rmd17DirOption, SeedOption, ThreadsOption, use_threads
from gaqtool.data.spec import resolve_data
from gaqtool.errors import InputError
from gaqtool.io.atomic import check_writable


def _model_config(train_frames, overrides: dict) -> dict:
    from gaqtool.training import fit_energy_shift, force_rms

    config = dict(DEFAULT_CONFIG, **overrides)
    present = sorted({int(z) for numbers in train_frames.numbers for z in numbers})
    config["species"] = sorted(set(config["species"]) | set(present))
    config["energy_shift"] = {str(k): v for k, v in fit_energy_shift(train_frames, config["species"]).items()}
    config["energy_scale"] = force_rms(train_frames)
    if train_frames.molecule:
        config["molecule"] = train_frames.molecule
    return config


@app.command(short_help="Train the reference FP32 potential (a .pt checkpoint).")
def train(
    data: Annotated[str, typer.Option("--data", help="Training data: rmd17:<molecule> (950 train / 50 val from split 01) or a file.")] = "rmd17:aspirin",
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.pt).")] = Path("model.pt"),
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs (cosine learning-rate schedule over all of them).")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Molecules per step.")] = 8,
    learning_rate: Annotated[float, typer.Option("--lr", min=0.0, help="Peak Adam learning rate.")] = 3e-3,
    force_weight: Annotated[float, typer.Option("--force-weight", min=0.0, help="Weight of the force MSE (eV/A)^2 in the loss.")] = 1.0,
    energy_weight: Annotated[float, typer.Option("--energy-weight", min=0.0, help="Weight of the per-atom energy MSE (eV)^2 in the loss.")] = 1.0,
    channels: Annotated[int, typer.Option("--channels", min=4, help="Channels per irrep (l = 0..lmax).")] = DEFAULT_CONFIG["num_channels"],
    lmax: Annotated[int, typer.Option("--lmax", min=1, max=3, help="Highest rotation order of features and spherical harmonics.")] = DEFAULT_CONFIG["lmax"],
    layers: Annotated[int, typer.Option("--layers", min=1, help="Interaction layers.")] = DEFAULT_CONFIG["num_layers"],
    cutoff: Annotated[float, typer.Option("--cutoff", min=1.0, help="Neighbour cutoff radius in Angstrom.")] = DEFAULT_CONFIG["cutoff"],
    attention: Annotated[str, typer.Option("--attention", help="Attention logits: 'cosine' (normalized q/k with learned temperature) or 'dot'.")] = "cosine",
    train_frames_limit: Annotated[Optional[int], typer.Option("--train-frames", min=1, help="Use only the first N training frames (quick runs).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", min=0.1, help="Stop after this many minutes (best checkpoint so far is kept).")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this FP32 checkpoint (its architecture and weights; architecture options are ignored), e.g. for a second stage with a higher --energy-weight.")] = None,
    rmd17_dir: Rmd17DirOption = None,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
    device: DeviceOption = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Train an FP32 equivariant attention potential; writes a checkpoint with test metrics.

    Launched by torchrun (e.g. `torchrun --nproc-per-node 2 -m gaqtool train ...`), training is
    data-parallel (gloo on CPU, nccl on GPU) and only rank 0 writes the checkpoint.
    """
    if attention not in ("cosine", "dot"):
        raise InputError(f"--attention must be 'cosine' or 'dot', got '{attention}'")
    check_writable(output, "--output")
    import torch

    from gaqtool import distributed
    from gaqtool.device import place_model, select_device
    from gaqtool.io.checkpoint import load_checkpoint_model, save_checkpoint
    from gaqtool.metrics.accuracy import accuracy_metrics, predict
    from gaqtool.models.potential import build_model
    from gaqtool.training import TrainOptions, train_model

    target = select_device(device)  # before any work
    threads = use_threads(threads)
    distributed.init_from_env()  # data-parallel when launched by torchrun
    torch.manual_seed(seed)
    train_sel = resolve_data(data, "train", rmd17_dir)
    val_sel = resolve_data(data, "val", rmd17_dir)
    test_sel = resolve_data(data, "test", rmd17_dir) if data.startswith("rmd17") else None
    if not json_output:
        log.print(f"[dim]{escape(train_sel.note)}[/]")
    train_frames = train_sel.frames
    if train_frames_limit:
        train_frames = train_frames.subset(range(min(train_frames_limit, len(train_frames))))
    if init is not None:
        model, parent = load_checkpoint_model(init)
        model.train()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        config = _model_config(train_frames, {"num_channels": channels, "lmax": lmax, "num_layers": layers,
                                              "cutoff": cutoff, "attention": attention})
        model = build_model(config)
    place_model(model, target)
    options = TrainOptions(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                           force_weight=force_weight, energy_weight=energy_weight, seed=seed,
                           max_minutes=max_minutes)
    steps = epochs * -(-len(train_frames) // batch_size)
    with progress(json_output, transient=False) as bar:
        task = bar.add_task("training", total=steps, info="")
        on_step = training_callback(bar, task, "epoch")
        result = train_model(model, train_frames, val_sel.frames, options, on_step)
    if not distributed.is_main():
        return
    test_metrics = {}
    if test_sel is not None:
        test_metrics = accuracy_metrics(predict(result.model, test_sel.frames), test_sel.frames)
        test_metrics["data"] = test_sel.note
    training = {
        "data": data, "train_note": train_sel.note, "num_train": len(train_frames),
        "num_val": len(val_sel.frames), "options": options.__dict__, "best_epoch": result.best_epoch,
        "best_val": result.best_val, "seconds": result.seconds, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": str(torch.__version__),
        "processes": distributed.world_size(), "device": str(target),
        "init": str(init) if init else None,
        "previous_training": json.dumps(parent["training"], default=str) if init else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "history": json.dumps(result.history),
    }
    save_checkpoint(output, result.model, training, test_metrics)
    summary = {"output": str(output), "seconds": result.seconds, "best_epoch": result.best_epoch,
               "val": result.best_val, "test": test_metrics}
    if json_output:
        print_json(summary)
        return
    table = Table(title=f"trained {output}")
    table.add_column("set"), table.add_column("energy MAE (meV)"), table.add_column("force MAE (meV/A)")
    table.add_row("val", f"{result.best_val['energy_mae_mev']:.2f}", f"{result.best_val['force_mae_mev_a']:.2f}")
    if test_metrics:
        table.add_row(f"test ({test_metrics['num_frames']})", f"{test_metrics['energy_mae_mev']:.2f}",
                      f"{test_metrics['force_mae_mev_a']:.2f}")
    console.print(table)
    console.print(f"training time {result.seconds / 60:.1f} min on {torch.get_num_threads()} threads")
