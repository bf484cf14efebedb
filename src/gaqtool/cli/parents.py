"""The FP32 parent of a quantized model, as ``eval``, ``lee-check`` and ``bench`` find it, and
the short names of models in tables.

A quantized file records where it came from (``gaqtool.source_sha256``; the report's source
name, path and fidelity). The parent is the model named by ``--fp32``, or the recorded named
model (e.g. ``sevenn:7net-0``), or a checkpoint found as recorded or next to the file, or the
embedded model, each used only if its SHA-256 is the recorded one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from gaqtool.errors import GaqtoolError, InputError

if TYPE_CHECKING:
    from gaqtool.io.loading import LoadedModel

__all__ = ["display_name", "recorded_modal", "load_parent", "recorded_parent", "explicit_parent",
           "fp32_reference"]


def display_name(loaded: LoadedModel) -> str:
    """Short name of a model for tables: a named model's name (sevenn:7net-0), else the file's."""
    from gaqtool.backends import backend_for_name

    source = str(loaded.info.get("source") or "")
    if loaded.kind == "fp32" and source and not Path(source).exists():
        try:
            if backend_for_name(source) is not None:
                return source
        except GaqtoolError:
            pass
    return loaded.path.name


def recorded_modal(loaded: LoadedModel) -> str | None:
    """The fidelity a quantized model was made with (None for single-fidelity models)."""
    source = (loaded.info.get("report") or {}).get("source") or {}
    return source.get("modal") or (getattr(loaded.model, "config", None) or {}).get("modal")


def load_parent(source, trust_pickle: bool, modal: str | None) -> LoadedModel:
    from gaqtool.io.loading import load_model

    parent = load_model(source, trust_pickle, modal=modal)
    if parent.kind != "fp32":
        raise InputError(f"{source} is a quantized file, not an FP32 parent",
                         hint="pass the FP32 checkpoint or named model (e.g. sevenn:7net-0)")
    return parent


def recorded_parent(loaded: LoadedModel, trust_pickle: bool = False,
                    cache: dict[str, LoadedModel] | None = None) -> tuple[LoadedModel | None, str]:
    """The FP32 parent a quantized model's file records, and how it was found (or why not).

    Tried in order: the recorded named model (``report.source.name``, e.g. ``sevenn:7net-0``
    with its ``modal``); the recorded checkpoint file (``report.source.path``, a file name,
    looked up as given and next to the quantized file); the embedded model. A file is used only
    if its SHA-256 is the recorded ``gaqtool.source_sha256``. ``cache`` (keyed by that SHA-256)
    lets several quantized files share one loaded parent.
    """
    from gaqtool.backends import backend_for_name
    from gaqtool.io.checkpoint import default_model_path
    from gaqtool.io.loading import file_sha256

    cache = {} if cache is None else cache
    sha = loaded.info.get("source_sha256")
    source = (loaded.info.get("report") or {}).get("source") or {}
    modal = recorded_modal(loaded)
    name = source.get("name")
    if not sha:
        return None, f"{loaded.path.name} records no source SHA-256"
    if sha in cache:
        return cache[sha], cache[sha].info.get("found", "")
    reasons = []
    try:
        named = backend_for_name(str(name)) if name and not Path(str(name)).exists() else None
    except GaqtoolError:
        named = None
    if named is not None:
        try:
            parent = load_parent(name, trust_pickle, modal)
        except GaqtoolError as exc:
            reasons.append(f"{name}: {exc.message}")
        else:
            if file_sha256(parent.path) == sha:
                with_modal = f"{name} (modal {modal})" if modal else name
                parent.info["found"] = f"{with_modal}, the named model the file records"
                cache[sha] = parent
                return parent, parent.info["found"]
            reasons.append(f"{name} of this installation is not the checkpoint {loaded.path.name} "
                           "was made from (SHA-256 differs)")
    candidates = []
    if source.get("path"):
        recorded = Path(source["path"])
        candidates += [recorded, loaded.path.parent / recorded.name]
    candidates.append(default_model_path())
    seen = set()
    for candidate in candidates:
        if not candidate.is_file() or candidate.resolve() in seen:
            continue
        seen.add(candidate.resolve())
        if file_sha256(candidate) == sha:
            parent = load_parent(candidate, trust_pickle, modal)
            parent.info["found"] = f"{candidate}, SHA-256 as recorded"
            cache[sha] = parent
            return parent, parent.info["found"]
    why = "; ".join(reasons) or f"recorded source {name or source.get('path') or '?'} not found"
    return None, f"no FP32 parent of {loaded.path.name} found ({why})"


def explicit_parent(fp32: Path, quantized: list[LoadedModel], trust_pickle: bool
                    ) -> tuple[LoadedModel, list[str]]:
    """``--fp32``: the parent named on the command line (with the quantized files' fidelity),
    and a note for each quantized file that was made from another checkpoint."""
    from gaqtool.io.loading import file_sha256

    modal = next((recorded_modal(m) for m in quantized if recorded_modal(m)), None)
    parent = load_parent(fp32, trust_pickle, modal)
    sha = file_sha256(parent.path)
    notes = [f"{m.path.name} was quantized from another checkpoint than {fp32} (SHA-256 differs)"
             for m in quantized if m.info.get("source_sha256") not in (None, sha)]
    return parent, notes


def fp32_reference(loaded: LoadedModel, fp32: Optional[Path], trust_pickle: bool
                   ) -> tuple[LoadedModel | None, str]:
    """The model that frames without labels are compared with: ``--fp32`` if given, else the
    quantized model's recorded parent; an FP32 model has none of its own."""
    if fp32 is not None:
        parent, notes = explicit_parent(fp32, [loaded] if loaded.kind == "quantized" else [], trust_pickle)
        return parent, "; ".join([f"{fp32} (--fp32)"] + notes)
    if loaded.kind != "quantized":
        return None, f"{display_name(loaded)} is an FP32 model, with no parent to compare with"
    return recorded_parent(loaded, trust_pickle)
