"""The search's command: ``python -m edgecomp.search --config FILE [--set key=value] [--resume]``.

``main`` reads the flags ``edgecomp/search/__main__.py`` defines; they are defined only
when the search runs as a program, so importing ``edgecomp.search`` defines none.
"""

from __future__ import annotations

from edgecomp.search.loop import run
from edgecomp.search.output import summary
from edgecomp.search.space import load


def main(argv) -> int:
    """Loads the search file, runs the search, prints the summary; exit 1 when no candidate met every constraint."""
    from absl import flags

    from edgecomp import cli

    options = flags.FLAGS
    search = load(cli.config_flag(argv, options.config, "configs/search_micro.yaml"), list(options.set))
    outcome = run(search, resume=options.resume)
    print(summary(search, outcome))
    return 0 if outcome.best is not None else 1
