"""The distill stage of a config over several seeds: test errors of teacher, student alone and distilled.

Question: does a distilled student make at least 30 % fewer test errors than the same
student trained alone (Hinton et al.), and at how many seeds?

Runs only the stage (teacher training, the student alone, the distilled student), with
op determinism on as ``edgecomp.train`` has it, so a seed's row equals that seed's full
run. One line of JSON per seed, then the mean reduction of test errors.

Run (from the repository root):
    python -m experiments.distill_seeds --config configs/distill_digits.yaml --seeds 0,1,2,3,4
    python -m experiments.distill_seeds --config configs/distill_mnist1d.yaml --seeds 0,1,2
    python -m experiments.distill_seeds --config configs/distill_defaults_mnist1d.yaml --seeds 0,1,2
    python -m experiments.distill_seeds --config configs/distill_mnist1d.yaml --seeds 0,1 \\
        --distill '{"temperature": 8.0}'

Answer (docs/stages.md, ``distill``; test errors teacher / student alone / distilled): on
digits (``configs/distill_digits.yaml``, 359 test images) 3/12/8, 1/6/2, 3/8/3, 1/2/3, 1/9/4,
so 33, 67, 63, -50 and 56 % fewer errors than the student alone: the 30 % holds at 4 of 5
seeds. On MNIST-1D (``configs/distill_mnist1d.yaml``, 1,000 test signals) 33/35/32, 25/33/27,
30/37/32: 9, 18 and 14 %; the teacher is only 2-8 errors better than the student alone. With
every distill setting at its default (``configs/distill_defaults_mnist1d.yaml``) the returned
student made 92/89/110 test errors at 20 epochs and 43/32/34 at 100.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from edgecomp import augment, config, data, models, stages
from edgecomp._keras import keras, tf
from edgecomp.config import stage_kind, stage_params


def main() -> None:
    """Prints one JSON line per seed, then the mean error reduction."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a run config whose first stage is distill")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--distill", default="{}", help="JSON object of distill keys to override")
    args = parser.parse_args()
    tf.config.experimental.enable_op_determinism()
    raw = config.load(args.config).model_dump(mode="json", exclude_none=True)
    if not raw["stages"] or stage_kind(config.from_dict(raw).stages[0]) != "distill":
        raise SystemExit(f"{args.config}: the first stage is not distill")
    raw["stages"][0]["distill"].update(json.loads(args.distill))
    reductions = []
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = config.from_dict({**raw, "seed": seed})
        dataset = augment.attach(data.load(cfg.data, cfg.seed), cfg.train.augment)   # as edgecomp.train does
        keras.utils.set_random_seed(cfg.seed)
        model = models.build(cfg.model, dataset.input_shape, dataset.num_classes)
        params = stage_params(cfg.stages[0]).model_copy(update={"baseline_student": True})
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="edgecomp-distill-") as logs:
            _, record = stages.apply("distill", model, params, stages.StageContext(cfg, dataset, Path(logs)))
        details = record.details
        reductions.append(details["error_reduction"])
        print(json.dumps({
            "seed": seed, "teacher_errors": details["teacher"]["test_errors"],
            **({"member_errors": [member["test_errors"] for member in details["teacher"]["members"]]}
               if "members" in details["teacher"] else {}),
            "alone_errors": details["student_alone"]["test_errors"],
            "distilled_errors": details["distilled"]["test_errors"], "error_reduction": details["error_reduction"],
            "distilled_vs_teacher_points": round((details["distilled"]["accuracy"]
                                                  - details["teacher"]["accuracy"]) * 100, 2),
            "validation": {role: details[role]["validation_accuracy"]
                           for role in ("teacher", "student_alone", "distilled")},
            "gap_closed_on_validation": _gap_closed(details), "kept": details["kept"],
            "seconds": round(time.time() - started),
        }), flush=True)
    print(f"mean error reduction {statistics.mean(reductions):.1%} over {len(reductions)} seeds "
          f"(min {min(reductions):.1%}, max {max(reductions):.1%})")


def _gap_closed(details: dict):
    """Share of the teacher's validation lead over the student alone that distillation won back (None under 2 pt)."""
    teacher, alone = details["teacher"]["validation_accuracy"], details["student_alone"]["validation_accuracy"]
    if teacher is None or alone is None or teacher - alone < 0.02:
        return None
    return round((details["distilled"]["validation_accuracy"] - alone) / (teacher - alone), 3)


if __name__ == "__main__":
    main()
