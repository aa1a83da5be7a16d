"""Print the paths of the wheels in a folder that this Python can install (one per project), for
gpu_check.sh on a machine without a package index (and perhaps without pip or `packaging`)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path


def compatible(filename: str) -> bool:
    parts = filename[:-len(".whl")].split("-")
    python_tags, abi, platforms = parts[-3].split("."), parts[-2], parts[-1].split(".")
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if abi == "abi3":
        python_ok = any(t.startswith("cp3") and int(t[3:]) <= sys.version_info.minor for t in python_tags)
    else:
        python_ok = here in python_tags or any(t in ("py3", "py2.py3") or t == "py3" for t in python_tags)
        python_ok = python_ok and abi in (here, "none")
    machine = platform.machine()
    platform_ok = any(p == "any" or (p.startswith(("manylinux", "linux")) and p.endswith(machine)) for p in platforms)
    return python_ok and platform_ok


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--paths"]
    folder = Path(args[0])
    chosen: dict[str, Path] = {}
    for wheel in sorted(folder.glob("*.whl")):
        if compatible(wheel.name):
            chosen.setdefault(wheel.name.split("-")[0].lower(), wheel)
    print("\n".join(str(p) for p in chosen.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
