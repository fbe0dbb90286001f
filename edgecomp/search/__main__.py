"""``python -m edgecomp.search`` and ``edgecomp search``: the flags, then ``edgecomp.search.cli.main``.

``--help`` shows the package's description (``edgecomp.search``'s docstring).
"""

import edgecomp.search

__doc__ = edgecomp.search.__doc__   # absl's --help prints the main module's docstring

if __name__ == "__main__":
    from absl import flags

    from edgecomp import cli
    from edgecomp.search.cli import main

    flags.DEFINE_string("config", None, "search YAML file (see configs/search_micro.yaml).")
    flags.DEFINE_multi_string("set", [], "Override a key: --set search.max_candidates=10 (values parsed as YAML).")
    flags.DEFINE_bool("resume", False, "Reuse the baseline and the finished trials of an earlier run of this search.")
    cli.run_main(main)
