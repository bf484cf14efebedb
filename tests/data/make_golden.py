"""Writes tests/data/golden_v1.safetensors and its expected outputs (run once per format version).

The reader must keep loading this file and reproducing these numbers: old files stay usable.
Usage: python tests/data/make_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))

from gaqtool.config import QuantConfig  # noqa: E402
from gaqtool.data.frames import read_npz  # noqa: E402
from gaqtool.data.graph import make_batch  # noqa: E402
from gaqtool.io.safetensors_io import FORMAT_VERSION, save_quantized  # noqa: E402
from gaqtool.potential import energy_and_forces  # noqa: E402
from gaqtool.data.spec import sample_path  # noqa: E402
from gaqtool.workflow import quantize_loaded  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    config = QuantConfig.from_preset("w4a8", calib_frames=4)
    model, plan = quantize_loaded(make_tiny_model(), config, read_npz(sample_path("train")))
    path = HERE / f"golden_v{FORMAT_VERSION}.safetensors"
    save_quantized(path, model, config, plan, source_sha256="0" * 64, report={"note": "golden test file"})
    energies, forces = energy_and_forces(model, make_batch(read_npz(sample_path("test")), [0, 1], model.cutoff))
    expected = {"frames": [0, 1], "energies_ev": energies.tolist(), "forces_ev_a": forces.tolist()}
    (HERE / f"golden_v{FORMAT_VERSION}_expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
