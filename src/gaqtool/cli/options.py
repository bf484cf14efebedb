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
ThreadsOption = Annotated[Optional[int], typer.Option("--threads", min=1, help="Torch CPU threads (default: torch's choice).")]
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
