#!/usr/bin/env python3
"""Convert a DeepSpeech checkpoint or frozen graph to the service's model directory (see dsconvert/cli.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsconvert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
