"""The schemas of the compression stages: one parameter model per stage, and ``Stage``, an item of ``stages:``.

An item is a map with exactly one key, the stage's name; ``Stage`` picks the
parameter model by that key (``STAGE_NAMES``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, model_validator

from edgecomp.config.base import (
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_MULTIPLE,
    MAX_TEMPERATURE,
    STAGE_NAMES,
    _single_key,
    _Strict,
)
from edgecomp.config.sections import ModelSpec


class FeatureMatch(_Strict):
    """One feature-distillation term: MSE between a teacher and a student layer's outputs."""

    teacher: str = Field(..., min_length=1, description="teacher layer name")
    student: str = Field(..., min_length=1, description="student layer name (same spatial size; channels may differ)")
    weight: float = Field(1.0, gt=0.0, le=1e6)


class DistillConfig(_Strict):
    teacher: ModelSpec
    teacher_epochs: int = Field(100, ge=0, le=MAX_EPOCHS,
                                description="most epochs for a zoo/builder teacher, with the baseline's early stopping "
                                            "(a teacher from path is taken as trained)")
    temperature: float = Field(4.0, gt=0.0, le=MAX_TEMPERATURE)
    alpha: float = Field(0.1, ge=0.0, le=1.0, description="weight of the hard-label loss")
    epochs: int = Field(
        100, ge=0, le=MAX_EPOCHS,
        description="epochs of the distilled student and of the student alone (no early stopping: both get the "
                    "same); at 20, MNIST-1D students ended 0.87-0.92 on validation, at 100 0.95-0.98")
    learning_rate: float = Field(0.001, gt=0.0, le=MAX_LEARNING_RATE)
    student_init: Literal["scratch", "trained"] = Field(
        "scratch", description="scratch: fresh seeded weights (Hinton et al.); trained: the baseline-trained weights"
    )
    baseline_student: bool = Field(
        True, description="also train the student alone (same init, seed, epochs) and keep whichever scores higher "
                          "on the validation split; false trains only the distilled student")
    features: tuple[FeatureMatch, ...] = ()
    teacher_ensemble: int = Field(
        1, ge=1, le=16,
        description="train this many teachers from the teacher spec, each from its own seed, and distill from "
                    "their averaged probabilities",
    )

    @model_validator(mode="after")
    def _ensemble_is_trained_here(self):
        if self.teacher_ensemble > 1 and self.teacher.path:
            raise ValueError(f"teacher_ensemble: {self.teacher_ensemble} needs teachers trained here, from a zoo or "
                             "builder teacher; a teacher loaded from path is one model (set teacher_ensemble: 1)")
        if self.teacher_ensemble > 1 and self.teacher_epochs == 0:
            raise ValueError(f"teacher_ensemble: {self.teacher_ensemble} with teacher_epochs: 0 would average "
                             "untrained teachers; give teacher_epochs > 0")
        if self.teacher_ensemble > 1 and self.features:
            raise ValueError("features match the layers of one teacher; use them with teacher_ensemble: 1")
        return self


class LowRankConfig(_Strict):
    energy: Optional[float] = Field(None, gt=0.0, le=1.0, description="keep this share of Σ² (default 0.95)")
    rank_ratio: Optional[float] = Field(None, gt=0.0, le=1.0, description="rank = ratio × full rank")
    rank_multiple: int = Field(8, ge=1, le=MAX_MULTIPLE,
                               description="round ranks up to a multiple of this (SIMD-friendly)")
    mode: Literal["channel", "spatial"] = Field(
        "channel", description="channel: k×k C→r then 1×1 r→N; spatial (Conv2D): k×1 C→r then 1×k r→N"
    )
    min_params: int = Field(4096, ge=0, le=MAX_COUNT,
                            description="layers with fewer kernel weights are left as they are")
    layers: tuple[str, ...] = Field((), description="regexes of layer names to consider (default: all)")
    exclude: tuple[str, ...] = Field((), description="regexes of layer names to leave as they are")
    sensitivity: bool = Field(False, description="choose ranks greedily by measured accuracy drop")
    target_params_ratio: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="sensitivity: factorized layers' weights after/before"
    )
    finetune_epochs: int = Field(5, ge=0, le=MAX_EPOCHS)
    learning_rate: float = Field(0.0005, gt=0.0, le=MAX_LEARNING_RATE)
    recovery_epochs: int = Field(
        50, ge=0, le=MAX_EPOCHS,
        description="at most this many more epochs, with early stopping (patience 8, best weights of these epochs "
                    "restored), when validation accuracy after fine-tuning ended over 0.5 points below the "
                    "stage's input model's; 0 disables (so do 0 fine-tuning epochs)")

    @model_validator(mode="after")
    def _one_rank_rule(self):
        rules = [key for key in ("energy", "rank_ratio", "target_params_ratio") if getattr(self, key) is not None]
        if len(rules) > 1:
            raise ValueError(f"give one of energy, rank_ratio or target_params_ratio (got {' and '.join(rules)})")
        if self.sensitivity != (self.target_params_ratio is not None):
            raise ValueError("sensitivity: true needs target_params_ratio, and target_params_ratio needs "
                             "sensitivity: true")
        for pattern in (*self.layers, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"layers/exclude: {pattern!r} is not a regular expression ({error})") from None
        return self


class PruneConfig(_Strict):
    """Magnitude pruning: zeroed weights (unstructured, 2:4) or removed channels (filters)."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="share of weights (or, for filters, of channels) removed")
    schedule: Literal["polynomial", "constant"] = "polynomial"
    structure: Literal["unstructured", "2:4", "filters"] = Field(
        "unstructured", description="unstructured | 2:4 (zeroed weights) | filters (whole channels removed)"
    )
    epochs: int = Field(10, ge=0, le=MAX_EPOCHS,
                        description="fine-tuning epochs; unstructured/2:4 prune during them (≥ 1)")
    learning_rate: float = Field(0.001, gt=0.0, le=MAX_LEARNING_RATE,
                                 description="Adam's learning rate while pruning and recovering")
    ramp_share: float = Field(0.75, gt=0.0, le=1.0, description="polynomial: share of steps ramping to sparsity")
    min_weights: int = Field(
        1024, ge=0, le=MAX_COUNT,
        description="unstructured: kernels with fewer weights are left dense (a first conv of 144 weights pruned "
                    "to 0.8 cost 2.2 points of 97.8 and saved 115 weights; skipping kernels under 1,024 made "
                    "prune 0.8 lossless there); 0 prunes every kernel")
    recovery_epochs: int = Field(
        50, ge=0, le=MAX_EPOCHS,
        description="unstructured/2:4: at most this many more epochs at full sparsity, with early stopping "
                    "(patience 8), when validation accuracy ended over 0.5 points below the unpruned model's; "
                    "filters: fine-tuning lasts up to epochs + recovery_epochs, with early stopping; 0 disables")
    criterion: Literal["l1", "l2"] = Field("l1", description="filters: channel ranking norm")
    scope: Literal["layer", "global", "sensitivity"] = Field(
        "sensitivity", description="filters: remove sparsity of each layer's channels (layer), rank all channels "
                             "together (global), or choose each layer's share by its measured validation loss for "
                             "the savings of layer (sensitivity, the default: on a tiny ViT at 0.5, -0.28 points "
                             "where layer lost 7.24)"
    )
    round_to: int = Field(8, ge=1, le=MAX_MULTIPLE,
                          description="filters: kept channels are a multiple of this (SIMD-friendly)")

    @model_validator(mode="after")
    def _epochs_for_structure(self):
        if self.structure != "filters" and self.epochs < 1:
            raise ValueError(
                f"epochs: {self.structure} pruning happens while fine-tuning, so epochs must be at least 1 "
                f"(got {self.epochs}); epochs 0 is allowed only with structure 'filters'"
            )
        return self


class ClusterConfig(_Strict):
    clusters: int = Field(16, ge=2, le=256)
    epochs: int = Field(3, ge=0, le=MAX_EPOCHS)
    learning_rate: float = Field(0.0001, gt=0.0, le=MAX_LEARNING_RATE)
    recovery_epochs: int = Field(
        50, ge=0, le=MAX_EPOCHS,
        description="at most this many more epochs, with early stopping (patience 8, best weights of these epochs "
                    "restored), when validation accuracy after fine-tuning ended over 0.5 points below the "
                    "stage's input model's; 0 disables (so do 0 fine-tuning epochs)")
    fold_batchnorm: bool = Field(
        False, description="fold each BatchNormalization into the Conv/Dense before it first, so the clustered "
                           "kernels are the ones the file stores (else the converter's fold scales each channel)"
    )


class QuantizeConfig(_Strict):
    epochs: int = Field(3, ge=0, le=MAX_EPOCHS)
    learning_rate: float = Field(0.0001, gt=0.0, le=MAX_LEARNING_RATE)
    distill_from: Optional[Literal["float"]] = Field(
        None, description="float: the float model teaches its quantized copy during QAT"
    )
    distill_temperature: float = Field(2.0, gt=0.0, le=MAX_TEMPERATURE)
    distill_alpha: float = Field(0.5, ge=0.0, le=1.0)
    weights: Literal["per_channel", "per_tensor"] = Field(
        "per_channel", description="Conv2D and DepthwiseConv2D weight quantization; per_tensor (after a cluster "
                                   "stage) keeps a kernel's shared values shared in the int8 file: at most "
                                   "`clusters` values per tensor"
    )


class DistillStage(_Strict):
    distill: DistillConfig


class LowRankStage(_Strict):
    low_rank: LowRankConfig = LowRankConfig()


class PruneStage(_Strict):
    prune: PruneConfig = PruneConfig()


class ClusterStage(_Strict):
    cluster: ClusterConfig = ClusterConfig()


class QuantizeStage(_Strict):
    quantize: QuantizeConfig = QuantizeConfig()


Stage = Annotated[
    Union[
        Annotated[DistillStage, Tag("distill")],
        Annotated[LowRankStage, Tag("low_rank")],
        Annotated[PruneStage, Tag("prune")],
        Annotated[ClusterStage, Tag("cluster")],
        Annotated[QuantizeStage, Tag("quantize")],
    ],
    Discriminator(
        _single_key,
        custom_error_type="stage_item",
        custom_error_message="expected a map with exactly one key, one of: " + ", ".join(STAGE_NAMES),
    ),
]
