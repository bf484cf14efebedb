"""The uvu convolution of SevenNet-0's layers 1-3 in three formulations, in one process:

  e3nn    x[src] -> o3.TensorProduct(x[src], Y, w) -> index_add to receivers (what sevenn runs)
  eager   gaqtool's PyTorch reformulation (M = Y @ coupling, per-path einsum, one scatter)
  c       gaqtool's fused C kernels (``gaqtool.kernels.uvu_convolution``)

Each call is forward + backward to the node features, the harmonics and the weights (what
forces need). Repeats are interleaved (round robin) so that background load hits all variants
alike; reported: median wall time, minimum process CPU time, and GFLOP/s of the C kernels by
``UvuConvolution.flops_per_edge``. Shapes: 128x0e+64x1e+32x2e x 1x0e+1x1e+1x2e, 216 nodes,
6048 edges (the Si-216 graph's size), random features.

    python benchmarks/uvu_convolution_variants.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gaqtool.kernels.uvu_convolution import UvuConvolution, edge_index, uvu_tensor_product


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=216)
    parser.add_argument("--edges", type=int, default=6048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tp = uvu_tensor_product("128x0e+64x1e+32x2e", "1x0e+1x1e+1x2e", 2)
    n, e = args.nodes, args.edges
    x = torch.randn(n, tp.irreps_in1.dim, requires_grad=True)
    sh = torch.randn(e, tp.irreps_in2.dim, requires_grad=True)
    w = torch.randn(e, tp.weight_numel, requires_grad=True)
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    cotangent = torch.randn(n, tp.irreps_out.dim)
    fused = {name: UvuConvolution.from_tensor_product(tp, use_native=mode)
             for name, mode in (("eager", "never"), ("c", "auto"))}

    def e3nn_call():
        out = torch.zeros(n, tp.irreps_out.dim).index_add(0, dst, tp(x[src], sh, w))
        return out, torch.autograd.grad(out, (x, sh, w), cotangent)

    def fused_call(conv):
        def run():
            out = conv(x, sh, w, edge_index(src, dst, n))
            return out, torch.autograd.grad(out, (x, sh, w), cotangent)
        return run

    calls = {"e3nn": e3nn_call, **{name: fused_call(conv) for name, conv in fused.items()}}
    reference = calls["e3nn"]()
    reference = (reference[0].detach(), reference[1])
    for name, run in calls.items():
        out, grads = run()
        out = out.detach()
        errors = [float((a - b).abs().max() / b.abs().max()) for a, b in zip((out, *grads),
                                                                             (reference[0], *reference[1]))]
        print(f"{name:6s} max relative deviation from e3nn (out, dx, dY, dw): "
              + ", ".join(f"{v:.1e}" for v in errors))
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for r in range(args.repeats):
        for name in list(calls)[r % len(calls):] + list(calls)[:r % len(calls)]:
            started, started_cpu = time.perf_counter(), time.process_time()
            calls[name]()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    flops = fused["c"].flops_per_edge() * e
    print(f"\n{args.threads} thread(s), {n} nodes, {e} edges, forward + backward, "
          f"{args.repeats} interleaved repeats")
    for name in calls:
        median = statistics.median(wall[name])
        line = (f"  {name:6s} median wall {median * 1e3:8.1f} ms   min CPU {min(cpu[name]) * 1e3:8.1f} ms"
                f"   {statistics.median(wall['e3nn']) / median:5.1f}x e3nn")
        if name == "c":
            line += f"   {flops / min(cpu[name]) / 1e9:.1f} GFLOP per CPU second ({flops / 1e6:.0f} MFLOP)"
        print(line)


if __name__ == "__main__":
    main()
