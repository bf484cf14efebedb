#!/usr/bin/env bash
# End to end on the embedded aspirin model and the shipped rMD17 sample:
# quantize -> inspect -> eval -> lee-check -> md. Set GAQTOOL_RMD17_DIR for the full data set.
set -euo pipefail
gaqtool quantize --bits w4a8 -o aspirin_w4a8.safetensors --report aspirin_w4a8.json
gaqtool inspect aspirin_w4a8.safetensors --no-tensors
gaqtool eval aspirin_w4a8.safetensors --data rmd17
gaqtool lee-check "$(python -c 'from gaqtool.io.checkpoint import default_model_path as p; print(p())')" aspirin_w4a8.safetensors --localize
gaqtool md aspirin_w4a8.safetensors --steps 1000
