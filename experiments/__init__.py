"""Research scripts: each answers one question about edgecomp and says so in its docstring.

Each script's docstring states its question, the command that runs it and the answer
(the figures it printed, or where docs/ quotes them). Run them from the repository
root as modules, e.g. ``python -m experiments.distill_seeds --config ... --seeds 0,1,2``,
with edgecomp installed (``pip install -e .``) or ``PYTHONPATH`` set to the root.
Unlike ``tools/`` (what users and CI run), these may use edgecomp's private names:
they measure its internals, and are rerun only to check or extend a figure in docs/.
"""
