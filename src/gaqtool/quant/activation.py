"""Activation quantizers at irreps-typed module inputs.

``gaq``: l=0 channels get an asymmetric per-channel grid; every l>0 (channel, irrep) block is
quantized by MDDQ: its norm on an unsigned per-channel grid whose scale is calibrated from
norms (so calibration is rotation invariant) and its direction by the configured mode (for
``frame``, the component grid in each row's equivariant local frame, see
``gaqtool.quant.frames``).
``naive``: one symmetric per-tensor grid for all components, l>0 included (the baseline that
breaks equivariance).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from gaqtool.config import DirectionMode, Method, QuantConfig
from gaqtool.irreps import block_norms
from gaqtool.quant.direction import (fibonacci_sphere, quantize_direction_codebook,
                                      quantize_direction_component, quantize_direction_fp16)
from gaqtool.quant.frames import from_local, local_frames, to_local, wigner_from_l1
from gaqtool.quant.mddq import mddq_fake_quantize, norm_scale_from_max
from gaqtool.quant.observers import make_observer
from gaqtool.quant.weights import to_storage_precision
from gaqtool.quant.primitives import choose_qparams, fake_quantize, fake_quantize_lsq

__all__ = ["ActivationQuantizer"]


class ActivationQuantizer(nn.Module):
    """Fake-quantizes a tensor ``(..., irreps.dim)`` (mul_ir layout); modes: off / calibrate / quantize.
    ``num_bits``: this grid's bits (default: ``config.activation_bits``).

    Buffers (filled by calibration, stored in the output file):
      scalar_scale, scalar_zero_point: (num l=0 channels,) float32 / int32   [gaq]
      norm_scale:                      (num l>0 channels,) float32           [gaq]
      tensor_scale:                    (1,) float32                          [naive]
    """

    def __init__(self, irreps: o3.Irreps, config: QuantConfig, num_bits: int | None = None):
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.method = config.method
        self.num_bits = int(num_bits if num_bits is not None else config.activation_bits)
        self.observer_kind = config.observer.value
        self.percentile = config.percentile
        self.direction_mode = config.direction_mode.value
        self.direction_bits = config.direction_bits
        self.mode = "off"
        self.quantize_vectors = True  # QAT warm-up switches l>0 quantization off for a while
        self.learnable = False        # QAT: LSQ gradients reach scalar_scale / norm_scale
        self.tangent_projection = True
        num_scalars = sum(mul for mul, ir in self.irreps if ir.l == 0)
        # (l, start, stop, channels) of each run of consecutive equal irreps (e3nn's simplify):
        # in the mul_ir layout one contiguous slice that reshapes to (..., channels, 2l+1), so
        # e.g. 4 x 32x1o is quantized as one (..., 128, 3) block (the same per-channel numerics
        # with a quarter of the ops, which QAT's twice-differentiated graph pays for)
        merged = self.irreps.simplify()
        self.runs = [(ir.l, sl.start, sl.stop, mul) for (mul, ir), sl in zip(merged, merged.slices())]
        num_vectors = sum(mul for mul, ir in self.irreps if ir.l > 0)
        if self.method == Method.NAIVE:
            self.register_buffer("tensor_scale", torch.ones(1))
        else:
            self.register_buffer("scalar_scale", torch.ones(num_scalars))
            self.register_buffer("scalar_zero_point", torch.zeros(num_scalars, dtype=torch.int32))
            self.register_buffer("norm_scale", torch.ones(num_vectors))
        if config.direction_mode == DirectionMode.CODEBOOK and self.method == Method.GAQ:
            self.register_buffer("codebook", fibonacci_sphere(config.codebook_size), persistent=False)
        else:
            self.codebook = None
        self._observers: dict[str, object] = {}

    def extra_repr(self) -> str:
        return f"{self.irreps}, {self.method.value}, {self.num_bits} bit, mode={self.mode}"

    # --- calibration -------------------------------------------------------------------
    def _observe(self, key: str, values: torch.Tensor, channel_dim, symmetric: bool) -> None:
        if key not in self._observers:
            self._observers[key] = make_observer(self.observer_kind, channel_dim, self.num_bits,
                                                 symmetric, percentile=self.percentile)
        self._observers[key].update(values.detach())

    def _calibrate(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, self.irreps.dim).float()
        if self.method == Method.NAIVE:
            self._observe("tensor", flat.reshape(-1), None, True)
            return
        mask = torch.tensor([ir.l == 0 for mul, ir in self.irreps for _ in range(mul * ir.dim)])
        if mask.any():
            self._observe("scalar", flat[:, mask], 1, False)
        if not mask.all():
            norms = block_norms(flat, self.irreps)
            vector_channels = torch.tensor([ir.l > 0 for mul, ir in self.irreps for _ in range(mul)])
            self._observe("norm", norms[:, vector_channels], 1, False)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Turn accumulated statistics into scales; switch to 'quantize' mode."""
        if self.method == Method.NAIVE and "tensor" in self._observers:
            low, high = self._observers["tensor"].compute()
            scale, _ = choose_qparams(low, high, self.num_bits, symmetric=True)
            self.tensor_scale.copy_(to_storage_precision(scale.reshape(1)))
        if "scalar" in self._observers:
            low, high = self._observers["scalar"].compute()
            scale, zero = choose_qparams(low, high, self.num_bits, symmetric=False)
            self.scalar_scale.copy_(to_storage_precision(scale))
            self.scalar_zero_point.copy_(zero)
        if "norm" in self._observers:
            _, high = self._observers["norm"].compute()
            self.norm_scale.copy_(to_storage_precision(norm_scale_from_max(high, self.num_bits)))
        self._observers.clear()
        self.mode = "quantize"

    # --- forward -----------------------------------------------------------------------
    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == Method.NAIVE:
            zero = torch.zeros((), dtype=torch.int32)
            return fake_quantize(x, self.tensor_scale.reshape(()), zero, self.num_bits, symmetric=True)
        scalar_scale, norm_scale = self._scales()
        lead = x.shape[:-1]
        blocks = [x[..., start:stop].reshape(*lead, channels, 2 * l + 1)
                  for l, start, stop, channels in self.runs]
        frames = self._local_frames(blocks) if self.direction_mode == "frame" else None
        scalar_offset = vector_offset = 0
        out = []
        for (l, _, _, channels), block in zip(self.runs, blocks):
            if l == 0:
                sl = slice(scalar_offset, scalar_offset + channels)
                if self.learnable:  # identity input gradient: the deployed forces' rule
                    q = fake_quantize_lsq(block[..., 0], scalar_scale[sl], self.scalar_zero_point[sl],
                                          self.num_bits, symmetric=False, identity_input_grad=True)
                else:
                    q = fake_quantize(block[..., 0], scalar_scale[sl], self.scalar_zero_point[sl],
                                      self.num_bits, symmetric=False)
                out.append(q)
                scalar_offset += channels
                continue
            if not self.quantize_vectors:
                q = block
            else:
                sl = slice(vector_offset, vector_offset + channels)
                frame = frames[l] if frames is not None else None
                if self.learnable:
                    q = self._mddq_learnable(block, l, norm_scale[sl], frame)
                else:
                    q = self._mddq_deployed(block, l, sl, frame)
            out.append(q.reshape(*lead, -1))
            vector_offset += channels
        return torch.cat(out, dim=-1) if len(out) > 1 else out[0]

    def _local_frames(self, blocks: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """{l: D_l (..., 2l+1, 2l+1)} rotating each row into its own equivariant frame, built from
        the row's l=1 channels (identity frames when the irreps have no l=1 part).
        ``blocks``: one ``(..., channels, 2l+1)`` tensor per entry of ``runs``."""
        vectors = [b for (l, *_), b in zip(self.runs, blocks) if l == 1]
        lmax = max(ir.l for _, ir in self.irreps)
        lead = blocks[0].shape[:-2]
        if vectors:
            rotation = local_frames(torch.cat(vectors, dim=-2))
        else:
            rotation = torch.eye(3, dtype=blocks[0].dtype, device=blocks[0].device).expand(*lead, 3, 3)
        return wigner_from_l1(rotation, lmax)

    def _scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar_scale, norm_scale); in QAT exp() of learned log-scales, so steps stay positive
        and Adam's updates are relative."""
        if self.learnable:
            return self.log_scalar_scale.exp(), self.log_norm_scale.exp()
        return self.scalar_scale, self.norm_scale

    def _mddq_deployed(self, block: torch.Tensor, l: int, channels: slice,
                       frame: torch.Tensor | None) -> torch.Tensor:
        """MDDQ of ``block (..., mul, 2l+1)`` on the calibrated grids, straight-through.

        The rounding (in the row's local ``frame (..., 2l+1, 2l+1)`` if given) is computed
        without autograd and the gradient is the identity, so the frame rotations stay out of
        the graph that force training differentiates twice (the value is the same as rotating
        ``block`` on the graph: D^T D = I)."""
        mode = self.direction_mode
        if mode == "frame" or (mode == "codebook" and l != 1):
            mode = "component"  # the codebook is defined for l=1 only
        with torch.no_grad():
            local = block if frame is None else to_local(block, frame)
            q = mddq_fake_quantize(local, self.norm_scale[channels], self.num_bits, mode,
                                   self.direction_bits,
                                   codebook=self.codebook if mode == "codebook" else None)
            if frame is not None:
                q = from_local(q, frame)
        return q + (block - block.detach())

    def _mddq_learnable(self, block: torch.Tensor, l: int, norm_scale: torch.Tensor,
                        frame: torch.Tensor | None) -> torch.Tensor:
        """MDDQ for QAT: LSQ on the norm (its step size learns), straight-through direction.

        With ``tangent_projection`` the straight-through estimator acts on the unit direction
        u = v/|v|, so the gradient reaching v is projected onto the sphere's tangent space by
        the normalisation; without it, the block passes gradients as the identity.
        The norm is rotation invariant, so only the direction rounding needs the local
        ``frame``; it is done without autograd (the rounding has no gradient anyway), which
        keeps the frame rotations out of the twice-differentiated graph.
        """
        # smooth norm: finite first and second derivatives at v = 0 (l>0 features start at zero)
        norm = torch.sqrt((block * block).sum(-1, keepdim=True) + 1e-12)
        zero = torch.zeros((), dtype=torch.int32)
        norm_q = fake_quantize_lsq(norm, norm_scale.unsqueeze(-1), zero, self.num_bits,
                                   symmetric=False, identity_input_grad=True)
        unit = block / norm.clamp_min(1e-12)
        with torch.no_grad():
            local = unit if frame is None else to_local(unit, frame)
            if self.direction_mode == "codebook" and l == 1:
                local_q = quantize_direction_codebook(local, self.codebook)
            elif self.direction_mode == "fp16":
                local_q = quantize_direction_fp16(local)
            else:
                local_q = quantize_direction_component(local, self.direction_bits)
            unit_q = local_q if frame is None else from_local(local_q, frame)
        if self.tangent_projection:
            return norm_q * (unit + (unit_q - unit).detach())
        straight = block + (unit_q * norm - block).detach()  # value u_q |v|, identity gradient
        return straight * (norm_q / norm.detach().clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "calibrate":
            self._calibrate(x)
            return x
        return self._quantize(x)
