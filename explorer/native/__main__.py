"""Build the fused CPU kernels now, so that no page or test waits on a compiler later.

    python -m explorer.native --build

Run by scripts/setup.sh (the README's serve and test commands). Quick when they are already
built: torch's extension cache holds them, and ninja finds nothing to do. Prints one line,
saying whether they were already built, built now, turned off, or not available (no compiler
or headers: the engine then uses its eager tensor code); exits 1 only in that last case.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import enabled, get, status


def build() -> tuple[int, str]:
    """(exit status, one line for people)."""
    if not enabled():
        return 0, f"fused CPU kernels {status()}"
    started = time.time()
    module = get(block=True)
    if module is None:
        return 1, (f"fused CPU kernels could not be built, so the engine uses its {status()}, slower; "
                   "a C++ compiler and Python's headers (Debian: g++, python3-dev) build them")
    library = getattr(module, "__file__", None)
    # The library was written before this call started: torch's cache already held it, current.
    if library and os.path.getmtime(library) < started:
        return 0, f"fused CPU kernels already built ({library})"
    return 0, f"fused CPU kernels built in {time.time() - started:.0f} s ({library})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m explorer.native", description=__doc__.splitlines()[0])
    # --build is the one action (and the default), named so that setup.sh reads as what it does
    parser.add_argument("--build", action="store_true", help="build the kernels unless already built (default)")
    parser.parse_args(argv)
    code, line = build()
    print(f"explorer.native: {line}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
