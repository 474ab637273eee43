"""Fill the IJB-C embedding cache for one model, so that the demo embeds each model as soon as
it is trained (beside the other trainings) and the final compat_report.py only reads caches.

    python tools/demo/embed_ijbc.py MODEL.pt:NETWORK -d DATA [--workers N] [same flags as compat_report]
        [--record FILE.json]   # what was embedded (model checksum, images, feature size): the
                               # output the experiment runner checks to know the step is done
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.ijbc_eval.compat_report import parse_model_spec  # noqa: E402
from tools.ijbc_eval.embed import model_embeddings  # noqa: E402
from tools.ijbc_eval.ijbc_eval import add_embedding_arguments, embedding_options  # noqa: E402
from tools.ijbc_eval.protocol import load_verification_protocol  # noqa: E402
from utils.common.atomic_files import atomic_write_text  # noqa: E402
from utils.common.cli import StrictArgumentParser  # noqa: E402


def main(argv=None) -> int:
    parser = StrictArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="PATH:NETWORK", help="backbone state dict and its network")
    add_embedding_arguments(parser)
    parser.add_argument("--record", type=Path, default=None, metavar="FILE.json",
                        help="write what was embedded (model, its checksum, images, feature size) to this file")
    args = parser.parse_args(argv)
    try:
        _, path, network = parse_model_spec(args.model, default_network="", named=False)
        if not network:
            raise ValueError(f"{args.model}: expected PATH:NETWORK")
        protocol = load_verification_protocol(args.data_path, args.subset)
        embeddings = model_embeddings(path, network, protocol, embedding_options(args), label=path.parent.name)
        if args.record is not None:
            args.record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.record, json.dumps({
                "model": str(path), "network": network, "model_sha256": embeddings.model_sha256,
                "subset": args.subset, "images": len(embeddings.embeddings),
                "num_features": embeddings.num_features}, indent=1) + "\n")
    except (ValueError, OSError) as error:
        print(f"embed_ijbc: error: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"embed_ijbc: {path} ({network}): {len(embeddings.embeddings)} images embedded or found in the cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
