"""Data layer: labelled frames, rMD17 resolution and the standard split, graph batches.

Graph batches need torch; they are imported on first use, so that frames and data specs stay
light (the command line reads them for ``--help``).
"""

from gaqtool.data.frames import KCAL_MOL_TO_EV, Frames, read_ase, read_frames, read_npz
from gaqtool.data.spec import (RMD17_ENV, RMD17_MOLECULES, DataSelection, resolve_data,
                               sample_path, standard_split)

_GRAPH = ("Batch", "iterate_batches", "make_batch", "radius_graph")

__all__ = [
    "KCAL_MOL_TO_EV", "Frames", "read_ase", "read_frames", "read_npz",
    *_GRAPH,
    "RMD17_ENV", "RMD17_MOLECULES", "DataSelection", "resolve_data", "sample_path", "standard_split",
]


def __getattr__(name: str):
    if name in _GRAPH:
        from gaqtool.data import graph

        return getattr(graph, name)
    raise AttributeError(f"module 'gaqtool.data' has no attribute {name!r}")
