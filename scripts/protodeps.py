"""Copies the googleapis protos genmesh imports out of the googleapis-common-protos package.

buf and protoc need them on disk; taking them from the installed package keeps the build off any
remote schema registry and pins them to the runtime version.
"""

import shutil
import sys
from importlib.util import find_spec
from pathlib import Path

NEEDED = (
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
)


def main(dest: Path) -> None:
    spec = find_spec("google.api.annotations_pb2")
    if spec is None or spec.origin is None:
        sys.exit("googleapis-common-protos is not installed")
    root = Path(spec.origin).parents[2]
    for name in NEEDED:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, target)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
