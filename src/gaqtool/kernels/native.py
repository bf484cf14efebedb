"""Build and load gaqtool's C kernels (``uvu_native.c``) with the system C compiler, once.

The shared library is compiled at first use with ``cc -O3 -march=native -fopenmp`` into a cache
directory (``$GAQTOOL_KERNEL_CACHE``, default ``~/.cache/gaqtool/kernels``), named by a hash of
the source, the compiler and the CPU flags, and loaded with ``ctypes``; later processes reuse it
(about a second to build, no torch headers). Without a compiler, or if the build fails, callers
get None and one warning, and use the eager PyTorch path instead. ``GAQTOOL_NATIVE_KERNELS=0``
turns the kernels off; ``GAQTOOL_KERNEL_FLAGS`` appends compiler flags (e.g. ``-mno-avx512f``
builds the portable loops on an AVX-512 machine, as the tests do).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

__all__ = ["native_library", "native_unavailable_reason", "SOURCE"]

SOURCE = Path(__file__).with_name("uvu_native.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c99"]
_I64P, _F32P, _I32P = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
_I64, _INT = ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "uvu_forward": [_I64, _I64P, _I64P, _I64P, _F32P, _I64, _F32P, _I64, _F32P, _I64, _I32P, _I64,
                    _F32P, _I64, _INT],
    "uvu_grad_nodes": [_I64, _I64P, _I64P, _I64P, _F32P, _I64, _F32P, _I64, _F32P, _I64, _I32P, _I64,
                       _F32P, _I64, _INT],
    "uvu_grad_edges": [_I64, _I64P, _I64P, _F32P, _I64, _F32P, _I64, _F32P, _I64, _F32P, _I64, _I32P,
                       _I64, _F32P, _F32P, _INT],
}
_REASON: list[str] = []


def _cache_dir() -> Path:
    return Path(os.environ.get("GAQTOOL_KERNEL_CACHE", Path.home() / ".cache" / "gaqtool" / "kernels"))


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _flags() -> list[str]:
    return _FLAGS + os.environ.get("GAQTOOL_KERNEL_FLAGS", "").split()


def _build(compiler: str) -> Path:
    """Compile the source into the cache (atomic rename; concurrent builds are harmless)."""
    source, flags = SOURCE.read_bytes(), _flags()
    key = hashlib.sha256(source + compiler.encode() + " ".join(flags).encode()
                         + _cpu_flags().encode()).hexdigest()[:16]
    target = _cache_dir() / f"uvu_native_{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], check=True,
                       capture_output=True, timeout=120)
        os.replace(built, target)
    return target


@functools.lru_cache(maxsize=None)
def native_library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (with one warning) where it cannot be built."""
    if os.environ.get("GAQTOOL_NATIVE_KERNELS", "1") == "0":
        _REASON.append("GAQTOOL_NATIVE_KERNELS=0")
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        _REASON.append("no C compiler (cc, gcc) found")
    else:
        try:
            library = ctypes.CDLL(str(_build(compiler)))
            for name, argtypes in _SIGNATURES.items():
                getattr(library, name).argtypes = argtypes
                getattr(library, name).restype = None
            return library
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            _REASON.append(f"building the C kernels failed: {str(exc)[:120]} {detail[:200]!r}")
    warnings.warn(f"gaqtool: fast convolution kernels unavailable ({_REASON[-1]}); using the "
                  "slower PyTorch path", RuntimeWarning, stacklevel=2)
    return None


def native_unavailable_reason() -> str:
    """Why :func:`native_library` returned None ('' if it loaded or was not tried)."""
    return _REASON[-1] if _REASON else ""
