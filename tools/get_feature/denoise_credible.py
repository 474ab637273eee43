"""The reference wiki's spelling of the MixBCT denoising step:

    python tools/get_feature/denoise_credible.py --T 0.9 --SD f128_r18_softmax_class70

The tool lives in tools/denoising/denoise_credible.py; this path runs it with the same arguments
(same outputs and manifests), after a one-line note giving its real path.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.denoising.denoise_credible import TOOL, main  # noqa: E402
from utils.common.progress import run_tool  # noqa: E402

if __name__ == "__main__":
    print(f"note: the denoising tool is python {TOOL} (running it)", file=sys.stderr, flush=True)
    run_tool(main)
