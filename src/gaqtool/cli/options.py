"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gaqtool.config import ForceMode
from gaqtool.data.spec import RMD17_ENV

JsonOption = Annotated[bool, typer.Option("--json", help="Write one JSON document to stdout instead of tables.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed (rotations, shuffling, initialisation).")]
Rmd17DirOption = Annotated[Optional[Path], typer.Option(
    "--rmd17-dir", envvar=RMD17_ENV,
    help="Directory with rMD17 .npz files (pre-split *_train_01/_test_01, or full files with split CSVs). "
         "Unset: the shipped aspirin sample is used.")]
TrustPickleOption = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow loading checkpoints that contain pickled Python objects (only for files you trust).")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="Torch CPU threads. Default: one per core that is free now (OMP_NUM_THREADS if set).",
    show_default=False)]
ForceModeOverrideOption = Annotated[Optional[ForceMode], typer.Option(
    "--force-mode",
    help="Forces of activation-quantized models: conservative (-dE_s/dx of the model with activation "
         "rounding off: exact gradient, energy-conserving dynamics) or ste (autograd straight through the "
         "rounding: not the gradient of any energy). Default: the mode stored in the file.",
    show_default=False)]
E3nnConvolutionOption = Annotated[bool, typer.Option(
    "--e3nn-convolution",
    help="Run SevenNet's convolutions with e3nn's TensorProduct, as sevenn does, instead of "
         "gaqtool's fused uvu kernel (same results within float32 rounding, several times slower). "
         "Applies to the models given as arguments.")]
ModalOption = Annotated[Optional[str], typer.Option(
    "--modal", help="Fidelity of a multi-fidelity model (SevenNet-MF-0: PBE or R2SCAN); required "
                    "there, refused elsewhere. A quantized file keeps the one it was made with.")]
DeviceOption = Annotated[str, typer.Option(
    "--device", help="Where the model runs: cpu, cuda, cuda:N or auto (CUDA if present). Data "
                     "loading and metrics stay on the CPU.")]


def use_threads(threads: int | None) -> int:
    """Set torch's threads (``gaqtool.threads``) and keep freed memory for reuse
    (``gaqtool.allocator``); say so on stderr when the default leaves cores out because they are
    busy."""
    from gaqtool.allocator import keep_freed_memory
    from gaqtool.cli.console import log
    from gaqtool.threads import configure_threads, usable_cores

    keep_freed_memory()
    chosen = configure_threads(threads)
    cores = len(usable_cores())
    if threads is None and chosen < cores:
        log.print(f"[dim]{chosen} torch thread{'s' if chosen != 1 else ''}: {cores - chosen} of {cores} cores "
                  "busy (--threads N to choose)[/]", highlight=False)
    return chosen
