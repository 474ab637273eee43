"""Export a backbone to ONNX for deployment (as insightface's torch2onnx.py does), and check in
onnxruntime that the file computes the embeddings PyTorch computes before it is written.

    python tools/export_onnx.py MODEL.pt -net NAME [--num-features D] [-o OUT.onnx] [--static-batch N]

MODEL.pt: a backbone state dict (ours or insightface's, `module.`-prefixed or not) or an
insightface checkpoint holding `state_dict_backbone`. Default output: MODEL.onnx beside it.
The graph takes `data` float32 [B, 3, 112, 112] RGB normalised to (x - 127.5) / 127.5 and
returns `embedding` [B, d]. B is symbolic (any batch size; insightface's torch2onnx.py marks it
so too) unless --static-batch N fixes it for a runtime that needs static shapes (the evaluation
then runs the file N images at a time). --dynamic-batch, the earlier opt-in, is still accepted
and is now the default. The network name and embedding size
are stored in the file, so `tools/ijbc_eval/ijbc_eval.py -m OUT.onnx` reads them from it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backbones import (backbone_from_weights, infer_num_features,  # noqa: E402
                       read_backbone_weights)
from backbones.onnx_export import (DEFAULT_OPSET, IMAGE_SHAPE, OnnxBackbone,  # noqa: E402
                                   export_backbone, write_onnx)
from utils.common.checksums import file_sha256  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402
from utils.common.output_lock import lock_files  # noqa: E402
from utils.common.progress import run_tool  # noqa: E402

# the parity the export must reach on random faces, else nothing is written; the difference is
# taken relative to the embedding scale when that exceeds 1 (untrained networks in eval mode
# give embeddings of 1e6 and more, where float32 rounding alone exceeds 1e-4)
MAX_DIFFERENCE, MIN_COSINE = 1e-4, 0.99999
CHECK_FACES = 8


def parse_args(argv=None) -> argparse.Namespace:
    parser = StrictArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="backbone weights (model.pt)")
    parser.add_argument("-net", "--network", required=True, help="network name (backbones.get_model)")
    parser.add_argument("--num-features", type=int, default=None,
                        help="embedding size (default: read from the weights)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="ONNX file to write (default: MODEL with suffix .onnx)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--static-batch", type=int, default=None, metavar="N",
                       help="fix the batch size at N, for runtimes that need static shapes "
                            "(default: a symbolic batch dimension, any batch size)")
    batch.add_argument("--dynamic-batch", action="store_true",
                       help="a symbolic batch dimension: the default, accepted for old command lines")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    args = parser.parse_args(argv)
    if args.static_batch is not None and args.static_batch < 1:
        parser.error(f"--static-batch must be >= 1, got {args.static_batch}")
    return args


def parity(reference: torch.Tensor, exported: torch.Tensor):
    """(max abs difference, the same over max(1, largest |reference|), smallest cosine
    similarity) between two [B, d] embedding batches."""
    cosine = torch.nn.functional.cosine_similarity(reference.double(), exported.double(), dim=1)
    difference = float((reference - exported).abs().max())
    return difference, difference / max(1.0, float(reference.abs().max())), float(cosine.min())


def main(argv=None) -> Path:
    args = parse_args(argv)
    output = args.output if args.output is not None else args.model.with_suffix(".onnx")
    if output.resolve() == args.model.resolve():
        raise ValueError(f"-o {output} would overwrite the model it is exported from")
    with lock_files([output]):   # two exports to one file: the second is refused at once
        return export(args, output)


def export(args, output: Path) -> Path:
    weights = read_backbone_weights(args.model)   # read once: the size and the model come from it
    num_features = args.num_features
    if num_features is None:
        num_features = infer_num_features(weights, args.model)
    model = backbone_from_weights(weights, args.model, args.network, num_features).eval()
    serialised = export_backbone(model, args.network, num_features, file_sha256(args.model),
                                 args.static_batch, args.opset)

    exported = OnnxBackbone(output, serialised=serialised)
    faces = torch.rand(CHECK_FACES, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        reference = model(faces)
    max_difference, scaled_difference, min_cosine = parity(reference, exported(faces))
    if not (np.isfinite(scaled_difference) and scaled_difference < MAX_DIFFERENCE
            and min_cosine > MIN_COSINE):
        raise ValueError(f"{args.model}: the ONNX graph differs from PyTorch on {CHECK_FACES} random "
                         f"faces (max abs {max_difference:.3g}, relative to the embedding scale "
                         f"{scaled_difference:.3g}, cosine {min_cosine:.7f}); not written")
    write_onnx(output, serialised)
    print(f"{output}: {args.network}, {num_features}-d, batch "
          f"{'dynamic' if args.static_batch is None else args.static_batch}, opset {args.opset}; onnxruntime vs PyTorch on "
          f"{CHECK_FACES} random faces: max abs {max_difference:.2e}, min cosine {min_cosine:.8f}",
          flush=True)
    return output


if __name__ == "__main__":
    run_tool(main)
