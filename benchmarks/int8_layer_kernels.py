"""One radial-network layer of SevenNet-0 (64 -> 960 per edge, 6048 edges = Si-216) three ways:
float32 GEMM, gaqtool's int8 layer (per-row dynamic int8 input, torch._int_mm, compiled
dequantization; and its int8 backward), and oneDNN's quantized linear with a float32 output
(uint8 input with one dynamic scale and zero point per tensor; the dequantization is fused).

    python benchmarks/int8_layer_kernels.py --threads 2
    python benchmarks/int8_layer_kernels.py --threads 2 --sweep

Prints median milliseconds (freed memory kept, as the CLI runs) and the relative error of each
output against the float64 product of the same integer weights. ``--sweep``: forward and backward
apart and together, float32 against gaqtool's int8 kernels, for K = 64, N = 64 / 384 / 960 and
100 to 6048 rows (where ``gaqtool.kernels.int8``'s thresholds come from).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def _median_ms(call, repeats: int) -> float:
    for _ in range(4):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def sweep(k8, repeats: int) -> None:
    forward, backward = k8.make_kernel(True), k8.make_kernel(True, k8.int8_grad_input)
    print(f"float32 / int8, K = 64, {torch.get_num_threads()} threads, median of {repeats} (us)")
    for n in (64, 384, 960):
        for rows in (100, 290, 600, 1200, 2400, 6048):
            x, grad_y = torch.randn(rows, 64), torch.randn(rows, n)
            weight_int = torch.randint(-127, 128, (n, 64), dtype=torch.int8)
            scale = torch.rand(n)
            weight = weight_int.float() * scale[:, None]
            weight_nk = weight_int.contiguous()
            fwd = [_median_ms(call, repeats) * 1e3 for call in
                   (lambda: x @ weight.t(), lambda: forward(x, weight_int.t(), scale, None))]
            bwd = [_median_ms(call, repeats) * 1e3 for call in
                   (lambda: grad_y @ weight, lambda: backward(grad_y, weight_nk, scale))]
            print(f"  N {n:4d} rows {rows:5d} ({rows * 64 * n / 1e6:6.1f}M MACs): "
                  f"forward {fwd[0]:7.0f} / {fwd[1]:7.0f} = {fwd[0] / fwd[1]:.2f}x  "
                  f"backward {bwd[0]:7.0f} / {bwd[1]:7.0f} = {bwd[0] / bwd[1]:.2f}x  "
                  f"both {(fwd[0] + bwd[0]) / (fwd[1] + bwd[1]):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--edges", type=int, default=6048)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sweep", action="store_true", help="break-even table of forward + backward")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)

    from gaqtool.allocator import keep_freed_memory
    from gaqtool.kernels import int8 as k8

    keep_freed_memory()
    if args.sweep:
        sweep(k8, args.repeats)
        return
    edges, k, n = args.edges, 64, 960
    generator = torch.Generator().manual_seed(0)
    x = torch.nn.functional.silu(torch.randn(edges, k, generator=generator))  # a hidden layer's output
    weight_int = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    weight_scale = torch.rand(n, generator=generator) * 0.01
    weight = weight_int.float() * weight_scale[:, None]                         # (N, K)
    grad_y = torch.randn(edges, n, generator=generator)
    exact = x.double() @ weight.double().t()
    exact_grad = grad_y.double() @ weight.double()

    forward = k8.make_kernel(True)
    backward = k8.make_kernel(True, k8.int8_grad_input)
    weight_t, weight_nk = weight_int.t(), weight_int.contiguous()

    def relative(y, reference):
        return float((y.double() - reference).norm() / reference.norm())

    rows = [("float32 GEMM", lambda: x @ weight.t(), exact),
            ("gaqtool int8 (per-row)", lambda: forward(x, weight_t, weight_scale, None), exact),
            ("float32 GEMM, backward", lambda: grad_y @ weight, exact_grad),
            ("gaqtool int8 backward (per-row)", lambda: backward(grad_y, weight_nk, weight_scale), exact_grad)]
    if hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise"):
        packed = torch.ops.onednn.qlinear_prepack(weight_int, [edges, k])
        zero_points = torch.zeros(n, dtype=torch.int64)

        def onednn():
            low, high = x.min(), x.max()
            scale = float((high - low) / 255)
            zero = int(torch.round(-low / scale))
            qx = torch.clamp(torch.round(x / scale) + zero, 0, 255).to(torch.uint8)
            return torch.ops.onednn.qlinear_pointwise(qx, scale, zero, packed, weight_scale, zero_points,
                                                      None, 1.0, 0, torch.float32, "none", [], "")
        rows.insert(2, ("oneDNN qlinear, fp32 out (per-tensor)", onednn, exact))
    print(f"{edges} x {k} -> {n}, {args.threads} threads, median of {args.repeats}")
    for name, call, reference in rows:
        print(f"  {name:40s} {_median_ms(call, args.repeats):7.2f} ms   rel. error {relative(call(), reference):.1e}")


if __name__ == "__main__":
    main()
