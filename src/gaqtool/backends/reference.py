"""Backend of gaqtool's own reference potential (``gaqtool train``, the embedded aspirin model).

Checkpoints are ``gaqtool.io.checkpoint`` dicts; the model is rebuilt from its config dict by
``gaqtool.models.build_model``. Registers the quantization handler of the weightless
``ChannelwiseConvolution``, whose node-feature and spherical-harmonics inputs are quantized.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gaqtool.backends import Backend, LoadedSource
from gaqtool.errors import ModelLoadError
from gaqtool.models.convolution import ChannelwiseConvolution
from gaqtool.models.potential import build_model
from gaqtool.quant.apply import register_handler

__all__ = ["ReferenceBackend", "BACKEND"]

register_handler("ChannelwiseConvolution", lambda m: isinstance(m, ChannelwiseConvolution),
                 lambda m: ([m.irreps_in, m.irreps_sh, None, None, None], []))


class ReferenceBackend(Backend):
    name = "gaqtool"
    architectures = ("equivariant_attention_potential",)

    def recognises(self, payload) -> bool:
        return isinstance(payload, dict) and "gaqtool_checkpoint" in payload

    def from_payload(self, payload: dict, path: Path, modal: str | None = None,
                     e3nn_convolution: bool = False) -> LoadedSource:
        """``e3nn_convolution`` does not apply: this model's convolution is its own."""
        from gaqtool.io.checkpoint import check_checkpoint

        check_checkpoint(payload, path)
        if modal is not None:
            raise ModelLoadError(f"{path.name} has no modalities; --modal is for multi-fidelity models")
        try:
            model = build_model(payload["model_config"])
            model.load_state_dict(payload["state_dict"])
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"cannot rebuild the model in {path}: {str(exc).splitlines()[0]}") from None
        return LoadedSource(model.eval(), path, "fp32", model.config.get("molecule"),
                            {"training": payload.get("training", {}),
                             "test_metrics": payload.get("test_metrics", {})})

    def build(self, config: dict, e3nn_convolution: bool = False) -> torch.nn.Module:
        return build_model(config)


BACKEND = ReferenceBackend()
