#!/usr/bin/env python3
"""Decoder memory on noise, with and without the memory bound: scripts/benchmarks/decoder_memory.py says how.

    python scripts/decoder_memory.py [--widths 500 2048] [--streams 4] [--seconds 30] [--json memory.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts.benchmarks and app, from the root

from scripts.benchmarks.decoder_memory import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
