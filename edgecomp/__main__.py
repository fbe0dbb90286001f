"""``edgecomp <command> [flags]``: one entry point for the command-line tools.

Each command is the module that ``python -m edgecomp.<command>`` runs, with the
same flags; ``python -m edgecomp <command>`` works too.

Example:
    edgecomp train --config configs/quickstart.yaml --set train.epochs=3
    edgecomp bench --model models/quickstart/cpu/model.tflite
    edgecomp --version
"""

from __future__ import annotations

import runpy
import sys

COMMANDS = {
    "train": "train, compress, convert, verify, benchmark and report one config",
    "bench": "benchmark a .tflite on a device (local, ssh, adb)",
    "check": "judge an existing .tflite by a target's rules and measure its accuracy",
    "study": "run several recipes on one model and compare them",
    "search": "search compression settings under size/latency/accuracy constraints",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: edgecomp <command> [flags]   (edgecomp <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:{width}s}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "  --version  print edgecomp's version"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs ``edgecomp.<command>`` as a program with the remaining arguments."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("--version", "version"):
        from edgecomp import __version__

        print(f"edgecomp {__version__}")
        return 0
    command = args[0]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    sys.argv = [f"edgecomp {command}", *args[1:]]
    runpy.run_module(f"edgecomp.{command}", run_name="__main__", alter_sys=True)
    return 0   # the tools exit through absl's app.run; reached only if one returns normally


if __name__ == "__main__":
    sys.exit(main())
