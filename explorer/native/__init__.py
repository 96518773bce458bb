"""Fused CPU kernels for the relaxation step, compiled on first use (relax_kernels.cpp).

Eager PyTorch computes the record of one step in about 20 tensor ops per layer; at batch 1
their dispatch costs more than the step. Here one call does a whole step: the edges'
products, then per schedule group the update and every statistic in one pass, then the
record. It needs a C++ compiler (g++) and Python's
headers, and is built once per machine into torch's extension cache (about 30 s on 2 cores;
``TORCH_EXTENSIONS_DIR`` moves it). Where it cannot be built, or on a GPU, the engine uses
its eager tensor code, which the tests check it against. ``EXPLORER_NATIVE=0`` turns it off.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger("explorer.native")

SOURCE = Path(__file__).with_name("relax_kernels.cpp")
NAME = "explorer_relax_kernels"
_lock = threading.Lock()
_module = None
_error: str | None = None
_tried = False
_blocking = True
_warm_thread: threading.Thread | None = None
_lock_warm = threading.Lock()


def _switched_on(name: str) -> bool:
    """An on/off environment variable, on unless set to 0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    return _switched_on("EXPLORER_NATIVE")


def _build():
    import shutil
    import warnings

    venv_bin = os.path.dirname(sys.executable)   # pip's ninja lives next to python in a venv
    if shutil.which("ninja") is None and os.path.exists(os.path.join(venv_bin, "ninja")):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU hosts
    from torch.utils import cpp_extension
    # The sums vectorise through `omp simd reduction`; no -fassociative-math, which would let the
    # compiler reorder the update's sum of edge outputs differently in different kernels (every
    # recording level must give the same state, bit for bit). Not finite-math: NaN must survive.
    # OpenMP for at::parallel_for; libgomp.so.1 resolves to the copy torch has already loaded.
    flags = ["-O3", "-fno-trapping-math", "-fno-signed-zeros", "-fno-math-errno", "-fopenmp"]
    if os.environ.get("EXPLORER_NATIVE_ARCH", "native") == "native":
        # Built on, and for, the machine it runs on. torch keys its cache on the flags' text, not on
        # the CPU: the tag makes a cache carried to another CPU rebuild rather than run the old
        # host's instructions (AVX2 code on an AVX-512 host; an illegal instruction the other way).
        flags += ["-march=native", f"-DEXPLORER_CPU_TAG={_cpu_tag()}"]
    try:
        built = os.path.exists(os.path.join(cpp_extension._get_build_directory(NAME, verbose=False), NAME + ".so"))
    except Exception:
        built = False
    if not built:   # a CLI user would otherwise watch a silent half minute
        print("explorer: compiling the fused CPU relaxation kernels (once per machine, about 30 s)",
              file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cpp_extension.load(name=NAME, sources=[str(SOURCE)],
                                  extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)


def _cpu_tag() -> str:
    """A short hash of this CPU's model and instruction-set flags (Linux), else of platform's name."""
    import hashlib
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features"))]
        text = "".join(sorted(set(lines)))
    except OSError:
        text = ""
    return hashlib.sha1((text or platform.processor() or platform.machine()).encode()).hexdigest()[:12]


def set_blocking(block: bool) -> None:
    """False: ``get()`` never waits for a build (a server builds with :func:`build_in_background` meanwhile)."""
    global _blocking
    _blocking = bool(block)


def get(block: bool | None = None):
    """The compiled module, or None: disabled, failed to build, or not built yet and not blocking
    (``block`` None follows :func:`set_blocking`)."""
    global _module, _error, _tried
    if _module is not None or _tried or not enabled():
        return _module
    keep_freed_memory()   # for the CPU steps this serves; here, not in a build thread
    if not (_blocking if block is None else block):
        return None
    with _lock:
        return _build_once()


_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than hand it back to the kernel.

    A step's edge outputs are fresh tensors (megabytes each at batch 64), and by default glibc
    returns the heap's free top to the kernel beyond 128 KiB or an adaptive threshold, so the
    next step faulted the same pages in again: about 480 page faults a step for the Fashion-MNIST
    network at batch 64 (200-step runs), which under this host's hypervisor cost about a tenth of
    the step and much of its jitter (bench/RESULTS-engine.md). Here blocks up to 32 MiB (the most
    glibc allows) come from the heap, which keeps 64 MiB of free top (per malloc arena; a
    thread's arena holds 64 MiB at most): no faults in steady state. Process-wide, and memory
    stays with the process up to that much; ``EXPLORER_MALLOC_TUNING=0`` leaves malloc as it is.
    Once per process, on the first call (:func:`get`, :func:`build_in_background`, in the calling
    thread); returns whether it applied (glibc on Linux only)."""
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if _switched_on("EXPLORER_MALLOC_TUNING") and sys.platform.startswith("linux"):
            try:
                import ctypes
                mallopt = ctypes.CDLL(None).mallopt   # glibc's; absent from musl
                M_TOP_PAD, M_MMAP_THRESHOLD = -2, -3   # glibc's malloc.h
                _malloc_tuned = bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TOP_PAD, 64 << 20))
            except Exception:   # another C library: leave it alone
                _malloc_tuned = False
    return _malloc_tuned


def _build_once():
    global _module, _error, _tried
    if not _tried:
        try:
            _module = _build()
        except Exception as exc:  # no compiler, no headers, a failed build: eager code instead
            lines = str(exc).strip().splitlines()
            _error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
            log.warning("fused relaxation kernels unavailable (%s); using eager tensor code", _error)
        _tried = True
    return _module


def build_in_background() -> threading.Thread:
    """For a server: start building (or loading) the kernels in a background thread, once, and
    from now on never let ``get()`` wait for them (it answers None until they are ready)."""
    global _warm_thread
    keep_freed_memory()   # in the caller's thread, before the build thread starts
    set_blocking(False)
    with _lock_warm:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=lambda: get(block=True), name="explorer-native-build",
                                            daemon=True)
            _warm_thread.start()
    return _warm_thread


def status() -> str:
    if not enabled():
        return "off (EXPLORER_NATIVE=0)"
    if _module is not None:
        return "fused CPU kernels"
    if _error is not None:
        return f"eager tensor code ({_error})"
    return "not built yet"
