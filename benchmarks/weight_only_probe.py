"""Weight-only accuracy probe: W4/W8, group sizes, FP32-kept layers, and the energy bias correction.

    python benchmarks/weight_only_probe.py     (reads ../shared/data/rmd17; every 25th test frame)
"""
import torch, numpy as np
torch.set_num_threads(1)
from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import predict, accuracy_metrics
from gaqtool.workflow import quantize_loaded
m = load_model(None)
calib = resolve_data("rmd17", "train", "../shared/data/rmd17", "aspirin").frames
test = resolve_data("rmd17", "test", "../shared/data/rmd17", "aspirin").frames.subset(range(0, 1000, 25))
cal = calib.subset(range(32))
pf = predict(m.model, cal)
print("fp32", accuracy_metrics(predict(m.model, test), test)["force_mae_mev_a"], flush=True)
for kw in [dict(bits="w4"), dict(bits="w4", group_size=16), dict(bits="w4", group_size=8), dict(bits="w4", keep_fp32=("embedding", "readout_*")), dict(bits="w8")]:
    bits = kw.pop("bits")
    q, _ = quantize_loaded(m.model, QuantConfig.from_preset(bits, method="weight-only", **kw), calib)
    p = predict(q, test); a = accuracy_metrics(p, test)
    off = np.mean(predict(q, cal).energies - pf.energies)
    p.energies = p.energies - off
    b = accuracy_metrics(p, test)
    print(bits, kw, "E", round(a["energy_mae_mev"],1), "E corrected", round(b["energy_mae_mev"],1), "F", round(a["force_mae_mev_a"],1), flush=True)
