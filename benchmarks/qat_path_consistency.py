"""Does QAT train the force function it deploys? Validation force MAE of the W4A8 QAT model at
its PTQ start, through the learnable (training) path and after convert_qat (deployed path).

    python benchmarks/qat_path_consistency.py --rmd17-dir ../shared/data/rmd17
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import rmd17_protocol
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.qat import convert_qat, prepare_qat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    train, val, _ = rmd17_protocol(loaded.molecule, args.rmd17_dir)
    model = prepare_qat(loaded.model, QuantConfig.from_preset("w4a8", weight_clip="minmax"), train).eval()
    training_path = accuracy_metrics(predict(model, val, batch_size=25), val)["force_mae_mev_a"]
    deployed = accuracy_metrics(predict(convert_qat(model), val, batch_size=25), val)["force_mae_mev_a"]
    print(f"validation force MAE: QAT (learnable) path {training_path:.2f} meV/A, deployed {deployed:.2f} meV/A")


if __name__ == "__main__":
    main()
