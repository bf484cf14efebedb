"""Where the time of energy + forces goes: torch.profiler on FP32, fake-quant and int8 models.

    .venv/bin/python benchmarks/profile_inference.py [FP32.pt] [QUANTIZED.safetensors] \
        [--threads 2] [--batch-size 32] [--top 12]

For each model, one profiled energy + forces call on a batch of aspirins (after warm-up) gives
two tables:
  * by module type: self CPU time of every op, attributed to the innermost module whose forward
    ran it; backward ops are attributed to the module of the forward op that created their
    autograd node (matched by sequence number), so each row is forward + backward;
  * by op: the top aten ops by self CPU time (forward and backward together).
Shares are of the profiled total; profiler overhead inflates small ops somewhat.
"""

from __future__ import annotations

import argparse
import copy
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from gaqtool.cli.bench import _freeze, _load_pair
from gaqtool.data.frames import read_npz
from gaqtool.data.graph import make_batch
from gaqtool.data.spec import sample_path
from gaqtool.io.checkpoint import default_model_path
from gaqtool.kernels import enable_integer_kernels
from gaqtool.potential import energy_and_forces
from gaqtool.quant.modules import QuantizedModule

PREFIX = "[module] "  # (inductor uses "## Call CompiledFxGraph ... ##" ranges)
BACKWARD = "autograd::engine::evaluate_function: "


def module_label(module: torch.nn.Module) -> str:
    if isinstance(module, QuantizedModule):
        if module.integer_forward is not None:
            return f"QuantizedModule[{module.kind}] int8 kernel (quant, int GEMM, dequant)"
        return f"QuantizedModule[{module.kind}] wrapper"
    cls = type(module)
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def instrument(model: torch.nn.Module) -> list:
    """Wrap every module's forward in a profiler range named after its type (e3nn's generated
    fx GraphModules are not wrapped: their ops count for the e3nn module that owns them)."""
    handles = []
    for module in model.modules():
        if isinstance(module, torch.fx.GraphModule):
            continue
        label, stack = PREFIX + module_label(module), []

        def pre(mod, args, label=label, stack=stack):
            stack.append(record_function(label).__enter__())

        def post(mod, args, out, stack=stack):
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def _ancestor(event, predicate):
    node = event.cpu_parent
    while node is not None and not predicate(node):
        node = node.cpu_parent
    return node


def attribute(events) -> tuple[dict[str, float], float]:
    """Self CPU microseconds per module label (forward + backward) and the total."""
    forward_module: dict[int, str] = {}
    for e in events:
        if e.name.startswith(PREFIX) or e.sequence_nr < 0:
            continue
        owner = _ancestor(e, lambda n: n.name.startswith(PREFIX))
        if owner is not None and _ancestor(e, lambda n: n.name.startswith(BACKWARD)) is None:
            forward_module.setdefault(e.sequence_nr, owner.name[len(PREFIX):])
    times: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in events:
        if e.name.startswith(PREFIX):
            continue
        total += e.self_cpu_time_total
        node = e if e.name.startswith(BACKWARD) else _ancestor(e, lambda n: n.name.startswith(BACKWARD))
        if node is not None:
            times["backward of " + forward_module.get(node.sequence_nr, "(unattributed)")] += e.self_cpu_time_total
            continue
        owner = _ancestor(e, lambda n: n.name.startswith(PREFIX))
        times[owner.name[len(PREFIX):] if owner else "(outside modules: energy_and_forces)"] += e.self_cpu_time_total
    return times, total


def merge_directions(times: dict[str, float]) -> dict[str, tuple[float, float]]:
    """label -> (forward us, backward us)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for label, t in times.items():
        if label.startswith("backward of "):
            out[label[len("backward of "):]][1] += t
        else:
            out[label][0] += t
    return {k: (v[0], v[1]) for k, v in out.items()}


def profile_model(name: str, model, batch, top: int) -> None:
    for _ in range(3):
        energy_and_forces(model, batch)
    handles = instrument(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        energy_and_forces(model, batch)
    for h in handles:
        h.remove()
    events = prof.events()
    times, total = attribute(events)
    rows = sorted(merge_directions(times).items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
    print(f"\n### {name}: {total / 1e3:.0f} ms profiled (self CPU time)\n")
    print("| module type | forward ms | backward ms | share |\n|---|---:|---:|---:|")
    for label, (fwd, bwd) in rows[:top]:
        print(f"| {label} | {fwd / 1e3:.1f} | {bwd / 1e3:.1f} | {100 * (fwd + bwd) / total:.1f}% |")
    print("\n| op | calls | self ms | share |\n|---|---:|---:|---:|")
    ops = [a for a in prof.key_averages() if not a.key.startswith(PREFIX)]
    for a in sorted(ops, key=lambda a: -a.self_cpu_time_total)[:top]:
        print(f"| {a.key} | {a.count} | {a.self_cpu_time_total / 1e3:.1f} | "
              f"{100 * a.self_cpu_time_total / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", nargs="?", type=Path, default=None)
    parser.add_argument("quantized", nargs="?", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    fp32_path = args.fp32 or (default_model_path() if default_model_path().exists() else Path("runs/dev.pt"))
    fp32, quantized, note = _load_pair(fp32_path, args.quantized)
    frames = read_npz(sample_path("test"))
    batch = make_batch(frames, [i % len(frames) for i in range(args.batch_size)], fp32.model.cutoff)
    print(f"Profile of energy + forces, {args.batch_size} aspirins ({len(batch.numbers)} atoms, "
          f"{len(batch.edge_src)} edges), {torch.get_num_threads()} threads; quantized: {note}")
    integer = _freeze(copy.deepcopy(quantized))
    enable_integer_kernels(integer, compile=True, require_speedup=False)
    for name, model in (("fp32", _freeze(copy.deepcopy(fp32.model))),
                        ("fake-quant", _freeze(copy.deepcopy(quantized))), ("int8", integer)):
        profile_model(name, model, batch, args.top)


if __name__ == "__main__":
    main()
