"""Knowledge distillation: a small student learns from a large teacher (Hinton et al., 2015).

The model from ``model:`` is the student. The teacher is built from its own model spec
and trained first (``teacher_epochs``) unless it is loaded from a file, which is taken
as trained. With ``student_init: scratch`` (the default) the student starts from fresh
seeded weights, as in the paper; ``trained`` continues from the baseline-trained weights.
With ``baseline_student: true`` (the default) the same student, from the same initial
weights, with the same seed and epochs, is also trained alone on the hard labels, so
the record says what distillation bought; the stage keeps whichever of the two scores
higher on the validation split (the distilled one on a tie) and says so, and it warns
when the teacher does not beat the student alone there.

Example:
    >>> from edgecomp.stages.distill import Distiller
    >>> distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)   # doctest: +SKIP
    >>> distiller.compile(optimizer=keras.optimizers.Adam(1e-3))              # doctest: +SKIP
    >>> distiller.fit(x_train, y_train, epochs=20)                            # doctest: +SKIP
    >>> distiller.student                                                     # the trained student
"""

from __future__ import annotations

import logging

from edgecomp import distribute, models, training
from edgecomp._keras import keras, tf
from edgecomp.config import DistillConfig
from edgecomp.errors import ConfigError
from edgecomp.stages import common

log = logging.getLogger("edgecomp")
LOSS_TERMS = ("loss", "student_loss", "distillation_loss", "feature_loss")
# A softmax head's probabilities are clipped here before the log that recovers logits.
PROBABILITY_FLOOR = 1e-7
# teacher_ensemble: member k is built and trained from seed + k × this step.
ENSEMBLE_SEED_STEP = 1000


def as_logits(outputs, from_logits: bool):
    """Logits, or log-probabilities for a softmax head.

    ``log(softmax(z)) = z - logsumexp(z)`` differs from the logits ``z`` by one constant
    per sample, and softmax is shift-invariant, so ``softmax(log p / T) == softmax(z / T)``
    for every temperature: distilling on log-probabilities is distilling on logits.
    """
    if from_logits:
        return outputs
    return tf.math.log(tf.clip_by_value(outputs, PROBABILITY_FLOOR, 1.0))


def distillation_loss(teacher_logits, student_logits, temperature: float):
    """``T² · mean over the batch of KL(softmax(teacher/T) ‖ softmax(student/T))``.

    The ``T²`` factor keeps the soft-target gradients on the scale of the hard-label
    ones when the temperature changes (Hinton et al., §2).
    """
    teacher_scaled = tf.cast(teacher_logits, tf.float32) / temperature
    student_scaled = tf.cast(student_logits, tf.float32) / temperature
    teacher_log_probabilities = tf.nn.log_softmax(teacher_scaled, axis=-1)
    kl = tf.reduce_sum(
        tf.exp(teacher_log_probabilities) * (teacher_log_probabilities - tf.nn.log_softmax(student_scaled, axis=-1)),
        axis=-1,
    )
    return tf.reduce_mean(kl) * temperature**2


class Distiller(keras.Model):
    """Trains ``student`` on ``alpha`` × hard-label loss + (1 − ``alpha``) × the distillation loss.

    The teacher runs in inference mode, outside the gradient tape, and is never updated.
    Either model may end in softmax (see ``as_logits``). Optional feature terms match
    intermediate activations by mean squared error, through a learned 1×1 adapter
    (a bias-free Dense on the channel axis) when the channel counts differ; the
    adapters belong to the Distiller, not to the student.

    Args:
        student: the tf_keras model to train; ``distiller.student`` after ``fit``.
        teacher: a trained tf_keras model with the same input and classes.
        temperature: softens both distributions; > 0.
        alpha: weight of the hard-label loss, 0..1.
        features: ``(teacher_layer, student_layer, weight)`` triples.
    """

    def __init__(self, student, teacher, *, temperature: float = 4.0, alpha: float = 0.1, features=(), **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher  # never in the gradient list, always called with training=False; left as given
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.student_from_logits = not models.ends_with_softmax(student)
        self.teacher_from_logits = not models.ends_with_softmax(teacher)
        # Under tf.distribute a Keras loss may not average by itself: each replica averages its
        # share of the batch (_loss_terms) and train_step divides by the replica count.
        reduction = keras.losses.Reduction.NONE if tf.distribute.has_strategy() else keras.losses.Reduction.AUTO
        self.hard_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=self.student_from_logits,
                                                                    reduction=reduction)
        self.feature_weights = [float(weight) for _, _, weight in features]
        self.student_taps = self.teacher_taps = None
        self.adapters = []
        if features:
            self.teacher_taps = _taps(teacher, [name for name, _, _ in features], "teacher")
            self.student_taps = _taps(student, [name for _, name, _ in features], "student")
            for (teacher_name, student_name, _), teacher_output, student_output in zip(
                features, self.teacher_taps.outputs[1:], self.student_taps.outputs[1:]
            ):
                self.adapters.append(_adapter(teacher_name, teacher_output.shape, student_name, student_output.shape))
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [*self.trackers.values(), self.accuracy_metric]

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def _forward(self, model, taps, inputs, training):
        if taps is None:
            return model(inputs, training=training), []
        outputs = taps(inputs, training=training)
        return outputs[0], list(outputs[1:])

    def _loss_terms(self, inputs, labels, teacher_outputs, teacher_features, training):
        student_outputs, student_features = self._forward(self.student, self.student_taps, inputs, training)
        student_loss = self.hard_loss(labels, student_outputs)
        if student_loss.shape.rank:   # reduction NONE (under tf.distribute): this replica's mean
            student_loss = tf.reduce_mean(student_loss)
        soft_loss = distillation_loss(
            as_logits(teacher_outputs, self.teacher_from_logits),
            as_logits(student_outputs, self.student_from_logits),
            self.temperature,
        )
        feature_loss = tf.constant(0.0)
        for adapter, weight, teacher_feature, student_feature in zip(
            self.adapters, self.feature_weights, teacher_features, student_features
        ):
            adapted = student_feature if adapter is None else adapter(student_feature)
            feature_loss += weight * tf.reduce_mean(tf.square(tf.cast(teacher_feature, tf.float32) - adapted))
        loss = self.alpha * student_loss + (1.0 - self.alpha) * soft_loss + feature_loss
        if training and self.student.losses:
            loss += tf.add_n(self.student.losses)
        return loss, {"student_loss": student_loss, "distillation_loss": soft_loss, "feature_loss": feature_loss}, \
            student_outputs

    def _update_metrics(self, loss, terms, labels, student_outputs):
        self.trackers["loss"].update_state(loss)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        self.accuracy_metric.update_state(labels, student_outputs)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        inputs, labels = data
        teacher_outputs, teacher_features = self._forward(self.teacher, self.teacher_taps, inputs, False)
        with tf.GradientTape() as tape:
            loss, terms, student_outputs = self._loss_terms(inputs, labels, teacher_outputs, teacher_features, True)
            # Replicas' gradients are summed: each contributes its mean / N, so the step follows the
            # mean over the global batch (tf.distribute's rule for custom training steps).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas if replicas > 1 else loss
        variables = self.student.trainable_variables + [
            v for adapter in self.adapters if adapter is not None for v in adapter.trainable_variables
        ]
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._update_metrics(loss, terms, labels, student_outputs)

    def test_step(self, data):
        inputs, labels = data
        teacher_outputs, teacher_features = self._forward(self.teacher, self.teacher_taps, inputs, False)
        loss, terms, student_outputs = self._loss_terms(inputs, labels, teacher_outputs, teacher_features, False)
        return self._update_metrics(loss, terms, labels, student_outputs)


def _taps(model, layer_names: list[str], role: str):
    """A model with the same input whose outputs are ``model``'s output and the named layers' outputs."""
    outputs = [model.output]
    for name in layer_names:
        try:
            outputs.append(model.get_layer(name).output)
        except ValueError:
            names = ", ".join(layer.name for layer in model.layers)
            raise ConfigError(f"distill.features: the {role} has no layer {name!r}; its layers are: {names}") from None
    return keras.Model(model.inputs, outputs, name=f"{role}_taps")


def _adapter(teacher_name, teacher_shape, student_name, student_shape):
    """None when shapes match; a bias-free Dense (a 1×1 convolution) on the channel axis when channels differ."""
    if tuple(teacher_shape[1:-1]) != tuple(student_shape[1:-1]):
        raise ConfigError(
            f"distill.features: teacher layer {teacher_name!r} gives {tuple(teacher_shape[1:])} but student layer "
            f"{student_name!r} gives {tuple(student_shape[1:])}; pick layers with the same spatial size "
            "(only channels may differ)"
        )
    if teacher_shape[-1] == student_shape[-1]:
        return None
    return keras.layers.Dense(teacher_shape[-1], use_bias=False, name=f"adapter_{student_name}_to_{teacher_name}")


def fit(distiller: Distiller, context, *, epochs: int, learning_rate: float):
    """Compiles and fits ``distiller`` on the run's train split; returns the per-epoch loss terms."""
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
    dataset = context.dataset
    inputs = distribute.fit_inputs(dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val,
                                   context.config.data.batch_size, augment=dataset.augment)
    history = distiller.fit(
        **inputs, epochs=epochs, verbose=training.verbosity(),
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(context.log_dir), profile_batch=0)],
    )
    return {name: [round(float(value), 6) for value in values] for name, values in history.history.items()}



def facts(params: DistillConfig):
    """Distillation trains a new student: not structural (its size is the student model's)."""
    from edgecomp.stages import Facts

    return Facts(structural=False, checkpointed=True, recorded_as="distill", training_keys=("teacher_epochs", "epochs"))

def apply(model, params: DistillConfig, context):
    """Returns ``(distilled student, StageRecord)``."""
    dataset = context.dataset
    seed = context.config.seed + len(context.previous) + 1
    teacher, teacher_details = _teacher(params, context, seed)

    student = model
    if params.student_init == "scratch":
        keras.utils.set_random_seed(seed)
        student = keras.models.clone_model(model)   # fresh weights from the layers' initializers
    initial_weights = student.get_weights()
    student_params = models.count_params(student)
    details = {
        "teacher": teacher_details,
        "student": {"name": student.name, "params": student_params, "init": params.student_init},
        "params_ratio": round(student_params / teacher_details["params"], 4),
        "temperature": params.temperature,
        "alpha": params.alpha,
        "epochs": params.epochs,
        "targets_from": {
            "teacher": "log of the members' mean probabilities" if params.teacher_ensemble > 1
            else "logits" if not models.ends_with_softmax(teacher) else "log-probabilities (softmax head)",
            "student": "logits" if not models.ends_with_softmax(student) else "log-probabilities (softmax head)",
        },
    }

    alone = None
    if params.baseline_student:
        alone, details["student_alone"] = _train_alone(student, initial_weights, params, context, seed)

    keras.utils.set_random_seed(seed)
    features = [(match.teacher, match.student, match.weight) for match in params.features]
    distiller = Distiller(student, teacher, temperature=params.temperature, alpha=params.alpha, features=features)
    log.info("distill: student %s params ← teacher %s params (%.2f×), T=%g, alpha=%g, %d epochs",
             f"{student_params:,}", f"{teacher_details['params']:,}", details["params_ratio"],
             params.temperature, params.alpha, params.epochs)
    details["history"] = fit(distiller, context, epochs=params.epochs, learning_rate=params.learning_rate) \
        if params.epochs > 0 else {}
    accuracy = training.accuracy(student, dataset.x_test, dataset.y_test)
    details["distilled"] = {"accuracy": accuracy, "test_errors": _errors(accuracy, dataset),
                            "validation_accuracy": common.validation_accuracy(student, context)}
    if alone is not None:
        alone_errors = details["student_alone"]["test_errors"]
        details["error_reduction"] = round(1.0 - details["distilled"]["test_errors"] / alone_errors, 4) \
            if alone_errors else None
        details.update(_keep_the_better(details))
        if details["kept"] == "student_alone":
            student.set_weights(alone.get_weights())
    training.compile_model(student, params.learning_rate)   # a plain compiled model for the later stages
    record = common.record("distill", student, context, [], details)
    log.info("distill: accuracy teacher %.4f, distilled student %.4f%s", teacher_details["accuracy"], accuracy,
             f", student alone {details['student_alone']['accuracy']:.4f}" if alone is not None else "")
    return student, record


def _train_alone(student, initial_weights: list, params: DistillConfig, context, seed: int) -> tuple[object, dict]:
    """``baseline_student``: the student trained alone from the same weights, seed and epochs; and its scores."""
    dataset = context.dataset
    alone = keras.models.clone_model(student)
    alone.set_weights(initial_weights)
    keras.utils.set_random_seed(seed)
    log.info("distill: training the student alone for %d epochs (baseline_student)", params.epochs)
    training.fit(alone, dataset, epochs=params.epochs, learning_rate=params.learning_rate,
                 batch_size=context.config.data.batch_size, log_dir=context.log_dir / "student_alone",
                 patience=0)
    accuracy = training.accuracy(alone, dataset.x_test, dataset.y_test)
    return alone, {"accuracy": accuracy, "test_errors": _errors(accuracy, dataset),
                   "validation_accuracy": common.validation_accuracy(alone, context)}


def _keep_the_better(details: dict) -> dict:
    """``{"kept", "notes"}``: the student the stage returns, judged on validation accuracy, and why."""
    distilled = details["distilled"]["validation_accuracy"]
    alone = details["student_alone"]["validation_accuracy"]
    teacher = details["teacher"].get("validation_accuracy")
    notes = []
    if teacher is not None and alone is not None and teacher <= alone:
        notes.append(f"the teacher ({teacher:.4f}) does not beat the student trained alone ({alone:.4f}) on the "
                     "validation split: it has little to teach; train it longer or pick a larger teacher")
    if distilled is None or alone is None:
        notes.append("no validation split: kept the distilled student without comparing")
        kept = "distilled"
    elif alone > distilled:
        notes.append(f"the student trained alone scores higher on the validation split ({alone:.4f} against "
                     f"{distilled:.4f} distilled): the stage returns it, not the distilled student")
        kept = "student_alone"
    else:
        kept = "distilled"
    for note in notes:
        log.warning("distill: %s", note)
    return {"kept": kept, "notes": notes}


def _teacher(params: DistillConfig, context, seed: int):
    """Builds the teacher (or ``teacher_ensemble`` of them), trains it when it came from the zoo or a builder,
    measures it."""
    dataset, cfg = context.dataset, context.config
    count = params.teacher_ensemble
    trained_here = not params.teacher.path and params.teacher_epochs > 0
    members, member_details = [], []
    for index in range(count):
        member_seed = seed + ENSEMBLE_SEED_STEP * index
        keras.utils.set_random_seed(member_seed)
        teacher = models.build(params.teacher, dataset.input_shape, dataset.num_classes, where="distill.teacher")
        which = f" {index + 1} of {count}" if count > 1 else ""
        if trained_here:
            log.info("distill: training the teacher%s %s (%s params) for up to %d epochs", which, teacher.name,
                     f"{models.count_params(teacher):,}", params.teacher_epochs)
            training.fit(teacher, dataset, epochs=params.teacher_epochs, learning_rate=cfg.train.learning_rate,
                         batch_size=cfg.data.batch_size,
                         log_dir=context.log_dir / ("teacher" if count == 1 else f"teacher_{index + 1}"),
                         patience=cfg.train.early_stopping_patience)
        elif not params.teacher.path:
            log.warning("distill: teacher_epochs is 0 and the teacher is not loaded from a file: "
                        "it teaches with its initial, untrained weights")
        accuracy = training.accuracy(teacher, dataset.x_test, dataset.y_test)
        members.append(teacher)
        member_details.append({"seed": member_seed, "accuracy": accuracy, "test_errors": _errors(accuracy, dataset)})
    teacher = members[0] if count == 1 else ensemble(members, dataset.input_shape)
    accuracy = member_details[0]["accuracy"] if count == 1 else \
        training.accuracy(teacher, dataset.x_test, dataset.y_test)
    details = {
        "name": teacher.name, "params": models.count_params(teacher), "accuracy": accuracy,
        "test_errors": _errors(accuracy, dataset), "validation_accuracy": common.validation_accuracy(teacher, context),
        "trained_here": trained_here, "epochs": params.teacher_epochs if trained_here else 0,
    }
    if count > 1:
        details["members"] = member_details
    return teacher, details


def ensemble(members, input_shape):
    """One model over ``members`` whose output is the log of their mean probabilities.

    The mean is taken in log space, ``logsumexp_k(log_softmax(z_k)) − log K``, so a
    class every member finds unlikely keeps its relative size instead of being
    clipped to a floor: that ranking is the "dark knowledge" the student learns
    from. The outputs are logits of the averaged prediction (``softmax(log p̄) == p̄``),
    so the Distiller softens them like any teacher's: ``softmax(log p̄ / T)``. Members
    may end in softmax (their log-probabilities are used, see ``as_logits``) or in
    logits. The model's parameters are the members' together.

    Example:
        >>> teacher = ensemble([teacher_a, teacher_b, teacher_c], (40, 1))   # doctest: +SKIP
    """
    inputs = keras.Input(input_shape, name="ensemble_input")
    outputs, from_logits = [], []
    for index, member in enumerate(members, start=1):
        member._name = f"{member.name}_{index}"   # nested models need distinct names; tf_keras has no setter
        outputs.append(member(inputs, training=False))
        from_logits.append(not models.ends_with_softmax(member))

    def log_mean_probabilities(member_outputs):
        log_probabilities = [tf.nn.log_softmax(as_logits(tf.cast(output, tf.float32), flag), axis=-1)
                             for output, flag in zip(member_outputs, from_logits)]
        return tf.reduce_logsumexp(tf.stack(log_probabilities), axis=0) - tf.math.log(float(len(members)))

    log_mean = keras.layers.Lambda(log_mean_probabilities, name="log_mean_probabilities")(outputs)
    return keras.Model(inputs, log_mean, name=f"ensemble_of_{len(members)}_{members[0].name}")


def _errors(accuracy: float, dataset) -> int:
    return int(round((1.0 - accuracy) * len(dataset.y_test)))
