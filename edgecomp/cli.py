"""What the two command-line tools share: flag parsing and error reporting.

User mistakes (``EdgecompError`` and flag errors) become one line on stderr,
``error: ...``, and exit status 2; never a traceback. So does a full or read-only
disk, whichever library was writing (TensorFlow's event writer raises its own
error types): ``files.disk_error`` recognises it.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from edgecomp import files
from edgecomp.errors import ConfigError, EdgecompError

EXIT_USAGE = 2


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser with flag errors turned into ``error: ...`` and exit 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}; see --help", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def config_flag(argv: list[str], path: str | None, example: str) -> str:
    """The ``--config`` file's path for a tool that takes no positional arguments (train, study, search).

    Args:
        argv: what absl left after parsing the flags (the program's name first).
        path: the ``--config`` flag's value.
        example: a shipped file to name when ``--config`` is missing.

    Raises:
        ConfigError: stray positional arguments or no ``--config``.
    """
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
    if not path:
        raise ConfigError(f"--config is required, e.g. --config {example}")
    return path


def read_model_flag(argv: list[str], path: str | None) -> bytes:
    """The ``--model`` file's bytes for a tool that takes no positional arguments (bench, check).

    Raises:
        ConfigError: stray positional arguments or no ``--model``.
        ModelError: a missing file or one that is not a TFLite model this runtime runs.
    """
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
    if not path:
        raise ConfigError("--model is required, e.g. --model models/quickstart/cpu/model.tflite")
    from edgecomp import runtime

    return runtime.read_model(path)


def run_main(main) -> None:
    """``app.run(main)`` with edgecomp's flag parser and error handling."""

    def guarded(argv):
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
        logging.getLogger("edgecomp").setLevel(logging.INFO)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        absl_logging.set_verbosity(absl_logging.ERROR)  # TensorFlow's converter chatter
        try:
            return main(argv)
        except EdgecompError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            print("error: interrupted; run again with --resume to continue", file=sys.stderr)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001 - only disk errors are turned into one line
            disk = files.disk_error(error)
            if disk is None:
                raise
            print(f"error: {disk}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    app.run(guarded, flags_parser=parse_flags)
