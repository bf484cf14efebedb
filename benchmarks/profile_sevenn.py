"""Where SevenNet-0's energy + forces time goes through gaqtool, by module type.

Each sevenn module is run in isolation on the inputs it sees in a real call (captured once):
forward, then backward of its outputs to its float inputs (as forces need), median of
--repeats. The radial MLPs (``weight_nn``) are timed on their own and subtracted from the
convolution that holds them. End-to-end energy + forces is timed beside, so the isolated sum
can be compared with it. Systems: 1 aspirin, 32 aspirins 20 A apart, Si 216 (as `gaqtool bench`).

    python benchmarks/profile_sevenn.py --threads 2 --repeats 5 [--e3nn-convolution] [--out X.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections import defaultdict

import torch

from gaqtool.cli.bench import universal_systems
from gaqtool.data.frames import read_npz
from gaqtool.data.spec import sample_path
from gaqtool.io.loading import load_model
from gaqtool.potential import energy_and_forces


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def captured_inputs(model, batch) -> list[tuple[str, torch.nn.Module, dict]]:
    """(name, module, input dict) of every step of one forward pass, tensors detached."""
    data = model._inputs(batch)
    steps = []
    with torch.no_grad():
        for name, module in model._steps:
            steps.append((name, module, {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                                         for k, v in data.items()}))
            data = module(data)
    return steps


def forward_backward(module, inputs: dict):
    """A call running ``module`` on a fresh copy of ``inputs`` and the backward of its new
    outputs to its float inputs."""
    def run():
        data = {k: v.clone().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
                for k, v in inputs.items()}
        leaves = [v for v in data.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        before = {k: id(v) for k, v in data.items()}
        out = module(dict(data))
        new = [v for k, v in out.items() if isinstance(v, torch.Tensor) and v.requires_grad
               and before.get(k) != id(v)]
        if new:
            torch.autograd.grad([t.sum() for t in new], leaves, allow_unused=True)
    return run


def radial_call(conv, inputs: dict):
    edge = inputs[conv.key_weight_input].clone().requires_grad_(True)

    def run():
        torch.autograd.grad(conv.weight_nn(edge).sum(), edge)
    return run


def profile(model, batch, repeats: int) -> dict:
    seconds: dict[str, float] = defaultdict(float)
    for name, module, inputs in captured_inputs(model, batch):
        kind = type(module).__name__
        total = median_seconds(forward_backward(module, inputs), repeats)
        if hasattr(module, "weight_nn"):
            radial = median_seconds(radial_call(module, inputs), repeats)
            seconds["radial MLP (weight_nn)"] += radial
            total -= radial
        seconds[kind] += total
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--e3nn-convolution", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    model = load_model("sevenn:7net-0", e3nn_convolution=args.e3nn_convolution).model
    for p in model.parameters():
        p.requires_grad_(False)
    report = {"threads": args.threads, "repeats": args.repeats,
              "convolution": "e3nn" if args.e3nn_convolution else "fused", "systems": {}}
    for name, batch, _, _ in universal_systems(read_npz(sample_path("test")), model.cutoff, 32):
        end_to_end = median_seconds(lambda: energy_and_forces(model, batch), args.repeats)
        parts = profile(model, batch, args.repeats)
        report["systems"][name] = {"atoms": len(batch.numbers), "edges": len(batch.edge_src),
                                   "end_to_end_s": end_to_end, "by_module_type_s": parts}
        print(f"\n{name}: {len(batch.numbers)} atoms, {len(batch.edge_src)} edges, energy + forces "
              f"{end_to_end * 1e3:.1f} ms end to end, {sum(parts.values()) * 1e3:.1f} ms isolated sum")
        for kind, t in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:32s} {t * 1e3:8.1f} ms  {t / sum(parts.values()):6.1%}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
