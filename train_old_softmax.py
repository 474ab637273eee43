"""Train an old model with a softmax classifier (Linear with bias + cross-entropy); the saved
model.pt holds the backbone only.

    python train_old_softmax.py configs/f128_r18_softmax_class30.py
    torchrun --nproc_per_node=8 train_old_softmax.py configs/f128_r18_softmax_class30.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from utils.training.engine import train  # noqa: E402
from utils.training.plain_methods import SoftmaxMethod  # noqa: E402

if __name__ == "__main__":
    train(SoftmaxMethod)
