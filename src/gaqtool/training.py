"""Energy + force training of a potential: loss, EMA weights, cosine schedule, validation.

Used by ``gaqtool train`` (FP32) and by quantization-aware fine-tuning.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from gaqtool import distributed
from gaqtool.data.frames import Frames
from gaqtool.errors import GaqtoolError
from gaqtool.data.graph import Batch, iterate_batches
from gaqtool.metrics.accuracy import Predictions, accuracy_metrics, predict
from gaqtool.potential import energy_and_forces

__all__ = ["TrainOptions", "TrainResult", "fit_energy_shift", "force_rms", "energy_force_loss",
           "train_model"]


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of a training run (all recorded in the checkpoint)."""

    epochs: int = 100
    batch_size: int = 8
    learning_rate: float = 3e-3
    final_lr_fraction: float = 0.01
    warmup_steps: int = 200
    energy_weight: float = 1.0
    force_weight: float = 1.0
    ema_decay: float = 0.99
    seed: int = 0
    max_minutes: float | None = None
    offset_free_selection: bool = False  # select epochs on energy errors minus their mean per atom


@dataclass
class TrainResult:
    model: torch.nn.Module
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def fit_energy_shift(frames: Frames, species: list[int]) -> dict[int, float]:
    """Per-element energies (eV) from least squares of total energy on composition.

    With too few compositions (rMD17: one) every element gets the mean energy per atom.
    """
    counts = np.array([[np.sum(z == s) for s in species] for z in frames.numbers], dtype=float)
    present = counts.sum(0) > 0
    if np.linalg.matrix_rank(counts[:, present]) < present.sum():
        per_atom = float(np.mean(frames.energies / counts.sum(1)))
        return {int(s): per_atom for s in species}
    solution, *_ = np.linalg.lstsq(counts, frames.energies, rcond=None)
    return {int(s): float(v) for s, v in zip(species, solution)}


def force_rms(frames: Frames) -> float:
    """Root mean square of reference force components, eV/A."""
    return float(np.sqrt(np.mean(np.concatenate([f.reshape(-1) for f in frames.forces]) ** 2)))


def energy_force_loss(energies: torch.Tensor, forces: torch.Tensor, batch: Batch,
                      energy_weight: float, force_weight: float) -> torch.Tensor:
    """w_E * MSE(per-atom energy, eV) + w_F * MSE(force components, eV/A)."""
    natoms = batch.num_atoms_per_molecule.to(torch.float64)
    energy_term = (((energies - batch.energies) / natoms) ** 2).mean().float()
    force_term = ((forces - batch.forces) ** 2).mean()
    return energy_weight * energy_term + force_weight * force_term


def _lr_factor(step: int, total: int, options: TrainOptions) -> float:
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    progress = min(1.0, (step - options.warmup_steps) / max(1, total - options.warmup_steps))
    low = options.final_lr_fraction
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def offset_free_energy_mae(predictions: Predictions, frames: Frames) -> float:
    """Energy MAE (meV) after removing the mean error per atom: what is left once a constant
    per-atom shift is corrected (as QAT does at the end, label-free, against the FP32 parent)."""
    atoms = np.asarray(frames.num_atoms, dtype=np.float64)
    errors = (predictions.energies - frames.energies) * 1000.0
    return float(np.abs(errors - atoms * (errors / atoms).mean()).mean())


def train_model(model: torch.nn.Module, train: Frames, val: Frames, options: TrainOptions,
                on_step: Callable[[dict], None] | None = None,
                loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] | None = None,
                on_epoch_start: Callable[[int, list[torch.nn.Module]], None] | None = None,
                select_from_epoch: int = 0) -> TrainResult:
    """Train ``model`` in place; return the EMA weights with the best validation score
    (force MAE + energy MAE per atom, weighted like the loss).

    ``on_step(info)`` is called after every step and every epoch (info['kind'] says which).
    ``loss_fn(model, batch)`` replaces the default energy + force loss (QAT adds terms).
    ``on_epoch_start(epoch, [model, ema_model])`` runs before each epoch (QAT schedules).
    Only epochs >= ``select_from_epoch`` can be selected (QAT: after the vector warm-up, when the
    trained numerics equal the deployed ones).
    Under ``torchrun`` every process trains on its shard of each epoch and gradients are
    averaged, so all processes hold the same parameters.
    """
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    distributed.broadcast_state(model)
    shards = distributed.world_size()
    per_rank = len(train) // shards
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate, amsgrad=True)
    steps_per_epoch = math.ceil(per_rank / options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, options))
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(options.ema_decay))
    if loss_fn is None:
        def loss_fn(m, b):
            e, f = energy_and_forces(m, b, create_graph=True)
            return energy_force_loss(e, f, b, options.energy_weight, options.force_weight)

    mean_atoms = float(np.mean(val.num_atoms))

    def score(metrics: dict) -> float:
        """Validation score with the loss's weights: w_F * force MAE + w_E * energy MAE per atom
        (the offset-free energy MAE with ``offset_free_selection``)."""
        energy = metrics.get("energy_mae_offset_free_mev", metrics["energy_mae_mev"])
        return options.force_weight * metrics["force_mae_mev_a"] + options.energy_weight * energy / mean_atoms

    best: dict[str, float] = {}
    best_score = math.inf
    best_state, best_epoch, history = copy.deepcopy(model.state_dict()), -1, []
    start = time.perf_counter()
    for epoch in range(options.epochs):
        if on_epoch_start:
            on_epoch_start(epoch, [model, ema.module])
        model.train()
        losses = []
        order = rng.permutation(len(train))  # the same on every process (same seed)
        shard = train.subset(order[distributed.rank() * per_rank:(distributed.rank() + 1) * per_rank])
        for batch in iterate_batches(shard, options.batch_size, model.cutoff):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            distributed.average_gradients(model)
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            losses.append(float(loss.detach()))
            if on_step:
                on_step({"kind": "step", "epoch": epoch, "loss": losses[-1],
                         "lr": scheduler.get_last_lr()[0]})
        ema.module.eval()
        predictions = predict(ema.module, val, batch_size=25)
        metrics = accuracy_metrics(predictions, val)
        if options.offset_free_selection:
            metrics["energy_mae_offset_free_mev"] = offset_free_energy_mae(predictions, val)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                  "seconds": time.perf_counter() - start, **{f"val_{k}": v for k, v in metrics.items()}}
        history.append(record)
        if epoch >= min(select_from_epoch, options.epochs - 1) and score(metrics) < best_score:
            best, best_epoch, best_score = metrics, epoch, score(metrics)
            best_state = copy.deepcopy(ema.module.state_dict())
        if on_step:
            on_step({"kind": "epoch", **record, "best_epoch": best_epoch})
        if options.max_minutes and time.perf_counter() - start > 60 * options.max_minutes:
            break
    if not best:
        raise GaqtoolError("training diverged: no finite validation metrics",
                           hint="lower --lr (or --qat-lr), or check the data for outliers")
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, best, history, time.perf_counter() - start)
