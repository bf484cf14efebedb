"""Data layer: labelled frames, rMD17 resolution and the standard split, graph batches."""

from gaqtool.data.frames import KCAL_MOL_TO_EV, Frames, read_ase, read_frames, read_npz
from gaqtool.data.graph import Batch, iterate_batches, make_batch, radius_graph
from gaqtool.data.spec import (RMD17_ENV, RMD17_MOLECULES, DataSelection, resolve_data,
                               sample_path, standard_split)

__all__ = [
    "KCAL_MOL_TO_EV", "Frames", "read_ase", "read_frames", "read_npz",
    "Batch", "iterate_batches", "make_batch", "radius_graph",
    "RMD17_ENV", "RMD17_MOLECULES", "DataSelection", "resolve_data", "sample_path", "standard_split",
]
