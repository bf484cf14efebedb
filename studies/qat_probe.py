"""QAT probe: W4A8 PTQ vs a short QAT (3 epochs on every 4th training frame) on the embedded model.

    python studies/qat_probe.py     (reads ../shared/data/rmd17; writes studies/qat_probe.json)
"""
import time, json, torch
torch.set_num_threads(1)
from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.data.graph import make_batch
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import predict, accuracy_metrics
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.qat import QATOptions, run_qat, prepare_qat, qat_loss
from gaqtool.workflow import quantize_loaded
import numpy as np
m = load_model(None)
d = "../shared/data/rmd17"
train = resolve_data("rmd17", "train", d, "aspirin").frames
val = resolve_data("rmd17", "val", d, "aspirin").frames
test = resolve_data("rmd17", "test", d, "aspirin").frames.subset(range(0, 1000, 5))
config = QuantConfig.from_preset("w4a8")
# cost of one QAT step (batch 8) vs one FP32 training step
q = prepare_qat(m.model, config, train)
b = make_batch(train, range(8), 5.0)
loss = qat_loss(QATOptions(), np.random.default_rng(0))
t = time.perf_counter()
for _ in range(3):
    l = loss(q, b); l.backward()
print("qat step s", (time.perf_counter() - t) / 3, flush=True)
ptq = quantize_loaded(m.model, config, train)[0]
res = {"fp32": accuracy_metrics(predict(m.model, test), test), "ptq": accuracy_metrics(predict(ptq, test), test)}
print({k: (round(v["energy_mae_mev"], 2), round(v["force_mae_mev_a"], 2)) for k, v in res.items()}, flush=True)
t = time.perf_counter()
out = run_qat(m.model, config, train.subset(range(0, 950, 4)), val, train, QATOptions(epochs=3, vector_warmup=1, learning_rate=1e-4),
              on_step=lambda i: print({k: i[k] for k in ("epoch", "val_energy_mae_mev", "val_force_mae_mev_a", "seconds")}, flush=True) if i["kind"] == "epoch" else None)
res["qat"] = accuracy_metrics(predict(out.model, test), test)
res["qat_seconds"] = time.perf_counter() - t
lf = test.subset(range(10))
res["lee"] = {k: local_equivariance_error(mm, lf, 2, 0)["force_mean_mev_a"] for k, mm in (("fp32", m.model), ("ptq", ptq), ("qat", out.model))}
print(json.dumps(res, indent=1, default=float), flush=True)
json.dump(res, open("studies/qat_probe.json", "w"), indent=1, default=float)
