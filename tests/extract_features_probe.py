"""Helper for test_engine: ArcFace training whose first epoch-start hook checks
trainer.extract_features against the backbone applied directly, and writes the result to
<output>/probe_rank<r>.json. Usable in-process or under torchrun."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.training.engine import train  # noqa: E402
from utils.data.loader import to_device  # noqa: E402
from utils.training.plain_methods import ArcFaceMethod  # noqa: E402

PROBE_INDICES = [7, 0, 31, 3, 3, 12, 5]  # odd count (uneven rank slices), a repeat, any order


class ExtractFeaturesProbe(ArcFaceMethod):
    def on_epoch_start(self, epoch, trainer):
        if epoch:
            return
        features = trainer.extract_features(PROBE_INDICES)
        images = torch.stack([trainer.dataset[index][0] for index in PROBE_INDICES])
        trainer.backbone.eval()
        with torch.no_grad():
            expected = trainer.backbone(to_device({"image": images}, trainer.device)["image"]).float()
        trainer.backbone.train()
        report = {"shape": list(features.shape), "dtype": str(features.dtype),
                  "max_difference": float((features.cpu() - expected.cpu()).abs().max())}
        (Path(self.cfg.output) / f"probe_rank{self.env.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    train(ExtractFeaturesProbe)
