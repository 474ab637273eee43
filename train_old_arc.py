"""Train an old (or independent new) model with ArcFace through Partial FC.

    python train_old_arc.py configs/f512_r18_arc_class30.py
    torchrun --nproc_per_node=8 train_old_arc.py configs/f512_r18_arc_class30.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from utils.training.engine import train  # noqa: E402
from utils.training.plain_methods import ArcFaceMethod  # noqa: E402

if __name__ == "__main__":
    train(ArcFaceMethod)
