"""LEE of W8 models vs activation grid: naive, MDDQ direction bits 8/12, fp16 directions, 16-bit activations.

    python benchmarks/lee_direction_sweep.py     (reads ../shared/data/rmd17; 6 test frames x 2 rotations)
"""
import torch
torch.set_num_threads(1)
from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.loading import load_model
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.workflow import quantize_loaded
m = load_model(None)
calib = resolve_data("rmd17", "train", "../shared/data/rmd17", "aspirin").frames
test = resolve_data("rmd17", "test", "../shared/data/rmd17", "aspirin").frames.subset(range(6))
print("fp32", local_equivariance_error(m.model, test, 2, 0)["force_mean_mev_a"], flush=True)
for kw in [dict(bits="w8a8", method="naive"), dict(bits="w8a8", direction_mode="component", direction_bits=8),
           dict(bits="w8a8", direction_mode="component", direction_bits=12), dict(bits="w8a8", direction_mode="fp16"),
           dict(bits="w8a16", direction_mode="fp16"), dict(bits="w8a16", method="naive")]:
    bits = kw.pop("bits")
    q, _ = quantize_loaded(m.model, QuantConfig.from_preset(bits, **kw), calib)
    print(bits, kw, local_equivariance_error(q, test, 2, 0)["force_mean_mev_a"], flush=True)
