"""The recipe search: the best compression recipe under the user's constraints, found by running candidates.

A search file is a study file (``name``, ``output_dir``, ``base``, ``techniques``,
``recipes``; see ``edgecomp.study``) plus a ``search:`` section: the target the
constraints apply to, the constraints, the objective, the knobs to search, the trial
budget and the backend.

How it searches:

1. The baseline is trained once (``runs/baseline``); its float32 reference is what
   ``max_accuracy_drop`` and the table's ratios compare with.
2. Each recipe (``ptq``, ``filters_qat``, ...) with every combination of its knobs
   is a candidate. A recipe's candidates are tried from the least to the most
   compressed, one per recipe per round.
3. **Structure check, before any fine-tuning**: the candidate's structural stages
   (filter pruning, low-rank rewriting) are applied to the baseline without
   fine-tuning and the result is converted with the candidate's quantization. File
   size, tensor arena (micro) and latency depend on the structure, not on the
   weights' values, so a candidate whose file is too large, whose arena is too large
   or whose latency is over 1.15 × ``max_latency_ms`` is rejected here. Unstructured
   pruning, clustering, distillation and QAT change values only: their files are
   as large as the baseline's (the check is shared and made once), except that a
   micro target stores clustered weights LUT-compressed, so for a recipe with
   ``cluster`` on a micro target the size check is left to the trial.
4. **Trial**: the candidate runs as an ordinary edgecomp run in
   ``runs/<candidate>/`` (the baseline checkpoint is reused); its ``.tflite`` is
   verified and measured, and the constraints are checked on those measurements.
5. **Dominance**: a candidate at least as compressed (every knob at least as
   aggressive) as one that missed an accuracy constraint is not tried. With
   ``objective: most_accurate`` a candidate more compressed than one that met every
   constraint is not tried either (the search assumes more compression costs
   accuracy). Candidates run least compressed first, so a size, arena or latency
   miss rules out nothing further: a later candidate is more compressed.
6. The best candidate that met every constraint (by the objective) is written as
   ``best.yaml``, a run config to run again with ``python -m edgecomp.train``;
   ``search.md``/``.csv``/``.json`` list every candidate, with why each rejected one
   was rejected, and ``pareto_<target>.png`` plots them.

Trials run one after another in this process (``backend: local``) or as tasks on a
Ray cluster (``backend: ray``; ``address`` of an existing cluster, or none to start
one on this machine). Which candidates a round tries depends only on earlier rounds'
results, never on the backend, so both backends try the same candidates and, with the
same seed, measure the same accuracies and sizes.

Example:
    python -m edgecomp.search --config configs/search_micro.yaml [--resume]
"""

# Where it is: space.py (the search file's schema, the knobs, the candidates and their run
# configs), structure.py (the structure check), verdicts.py (constraints, a trial's verdict,
# the best candidate), loop.py (the rounds and their trials), output.py (search.md/.csv/.json,
# best.yaml, the printed summary), cli.py and __main__.py (the command).

from edgecomp.search.cli import main
from edgecomp.search.loop import apply_dominance, run
from edgecomp.search.output import COLUMNS, render, rows, summary, write
from edgecomp.search.space import (KNOBS, QUANTIZATION_ORDER, TARGET_QUANTIZATIONS, Candidate, Constraints, Knob,
                                   Outcome, SearchConfig, SearchFileConfig, at_least_as_compressed, baseline_config,
                                   candidates, latency_device, load, ordered_values, recipes, trial_config)
from edgecomp.search.structure import LATENCY_MARGIN, STRUCTURAL_STAGES, StructureChecks, structure_step
from edgecomp.search.verdicts import Measured, accuracy_violation, budget_violation, choose, judge, latency_on

__all__ = [
    "COLUMNS", "KNOBS", "LATENCY_MARGIN", "QUANTIZATION_ORDER", "STRUCTURAL_STAGES", "TARGET_QUANTIZATIONS",
    "Candidate", "Constraints", "Knob", "Measured", "Outcome", "SearchConfig", "SearchFileConfig", "StructureChecks",
    "accuracy_violation", "apply_dominance", "at_least_as_compressed", "baseline_config", "budget_violation",
    "candidates", "choose", "judge", "latency_device", "latency_on", "load", "main", "ordered_values", "recipes",
    "render", "rows", "run", "structure_step", "summary", "trial_config", "write",
]
