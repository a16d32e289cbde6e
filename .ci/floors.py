"""The lowest versions pyproject.toml allows, as pip constraints (`name==floor`), for the floor job of
.ci/run: every `>=` of the dependencies and of the extras the job installs becomes `==`. torch is left out
(the job keeps the CPU build 2.13.0: torch's floor, 2.6, has no CPU wheel on PyPI; see pyproject.toml), and
so are the dev tools (pytest, ruff, ...), which test the package rather than run it.

    python3 .ci/floors.py [EXTRA ...]   (default extras: onnx demo)
"""

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

SKIP = {"torch"}


def floors(extras: list[str]) -> list[str]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    out = []
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)(?:\s*,.*)?", spec.strip())
        if m is None:
            raise SystemExit(f"{spec!r}: every dependency needs a floor (name>=version)")
        if m.group(1).lower() not in SKIP:
            out.append(f"{m.group(1)}=={m.group(2)}")
    return out


if __name__ == "__main__":
    print("\n".join(floors(sys.argv[1:] or ["onnx", "demo"])))
