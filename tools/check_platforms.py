"""Does edgecomp's core install resolve from wheels on the platforms users work on?

For each platform and Python version, asks pip to resolve ``pyproject.toml``'s
``dependencies`` from binary wheels only, without installing anything
(``pip install --dry-run --only-binary=:all: --platform ... --python-version ...``).
Needs the package index (CI runs it; nothing else does). Exit 1 names the
platform and pip's reason.

Example:
    python tools/check_platforms.py                 # every platform below
    python tools/check_platforms.py --python 3.13
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pip matches manylinux tags exactly when --platform is given: name the ones TensorFlow's wheels use.
PLATFORMS = {
    "macOS arm64": ["macosx_12_0_arm64", "macosx_11_0_arm64", "macosx_10_9_universal2"],
    "Linux aarch64 (Raspberry Pi OS 64-bit, Jetson, Graviton)": [
        "manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
}   # Linux x86_64: CI installs it for real
PYTHONS = ("3.10", "3.13")


def core_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def resolve(requirements: list[str], platforms: list[str], python: str) -> tuple[bool, str]:
    """``(resolved, pip's last lines)`` for ``requirements`` on ``platforms`` with ``python``."""
    with tempfile.TemporaryDirectory(prefix="edgecomp-platforms-") as target:
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--only-binary=:all:", "--python-version", python, "--target", target]
        for platform in platforms:
            command += ["--platform", platform]
        done = subprocess.run(command + requirements, capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("ERROR")]
    return done.returncode == 0, "\n".join(lines[-3:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", help=f"Python versions (default: {', '.join(PYTHONS)})")
    args = parser.parse_args()
    requirements = core_dependencies()
    failed = 0
    for name, platforms in PLATFORMS.items():
        for python in args.python or PYTHONS:
            started = time.time()
            ok, why = resolve(requirements, platforms, python)
            print(f"{'ok  ' if ok else 'FAIL'} {name}, Python {python}: core install "
                  f"{'resolves from wheels' if ok else 'does not resolve'} ({time.time() - started:.0f} s)"
                  + ("" if ok else f"\n{why}"), flush=True)
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
