"""Run under torchrun by tests/test_rank_failures.py: one tiny training whose input fails on one
rank. Besides what the engine prints, each rank records in <folder>/times_<rank>.json when it first
met the failure (the first bad-input error raised on this rank by the loader, the .bin reader or an
artifact check; absent when the rank never met it) and when it stopped (printed its line and began
leaving: the launcher may end a rank's last clean-up once another rank has exited), so the test
can measure how long the other ranks took to stop.

    probe.py FOLDER METHOD CONFIG [unreadable-on-rank0]

`unreadable-on-rank0`: rank 0's content hash of the artifacts fails the way an unreadable file
does (PermissionError). The tests run as root here, where file modes do not stop a read, so the
error is raised where the read happens instead."""
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils.artifacts.manifests as manifests  # noqa: E402
import utils.data.loader as loader  # noqa: E402
import utils.training.engine as engine  # noqa: E402
import utils.training.verification as verification  # noqa: E402

FAILED_AT = []


def timed(function):
    """`function`, recording when it first raises on this rank."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception:
            FAILED_AT.append(time.time())
            raise
    return wrapper


def unreadable(path, *args, **kwargs):
    raise PermissionError(13, "Permission denied", str(path))


def main() -> None:
    folder, method, config = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    rank = int(os.environ.get("RANK", "0"))
    verification.load_bin = timed(verification.load_bin)
    loader._OneLineWorkerErrors.__next__ = timed(loader._OneLineWorkerErrors.__next__)
    manifests.check_artifact = timed(manifests.check_artifact)
    manifests.content_sha256 = timed(unreadable if "unreadable-on-rank0" in sys.argv[4:] and rank == 0
                                     else manifests.content_sha256)
    stop = engine._stop

    def recorded_stop(*args, **kwargs):
        (folder / f"times_{rank}.json").write_text(json.dumps(
            {"failed_at": min(FAILED_AT) if FAILED_AT else None, "stopped_at": time.time()}))
        stop(*args, **kwargs)
    engine._stop = recorded_stop
    from tests.test_ddp_step import method_classes
    engine.train(method_classes()[method], [config])


if __name__ == "__main__":
    main()
