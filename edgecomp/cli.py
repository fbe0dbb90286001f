"""What the two command-line tools share: flag parsing and error reporting.

User mistakes (``EdgecompError`` and flag errors) become one line on stderr,
``error: ...``, and exit status 2; never a traceback.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from edgecomp.errors import EdgecompError

EXIT_USAGE = 2


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser with flag errors turned into ``error: ...`` and exit 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}; see --help", file=sys.stderr)
        sys.exit(EXIT_USAGE)


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
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print("error: interrupted; run again with --resume to continue", file=sys.stderr)
            sys.exit(130)

    app.run(guarded, flags_parser=parse_flags)
