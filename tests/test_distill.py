"""Knowledge distillation: the loss is Hinton's, the teacher never moves, the stage records what it bought."""

import math

import numpy as np
import pytest

from edgecomp import config, models, report, stages, training
from edgecomp._keras import keras, tf
from edgecomp.errors import ConfigError
from edgecomp.stages.distill import Distiller, distillation_loss, ensemble

TEACHER_LOGITS = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
STUDENT_LOGITS = [[0.0, 1.0, 0.0], [2.0, 0.0, -1.0]]


def hand_computed_loss(teacher, student, temperature):
    """T² · mean KL(p ‖ q), written out with math.exp, one sample and one class at a time."""
    total = 0.0
    for teacher_row, student_row in zip(teacher, student):
        p_numerators = [math.exp(z / temperature) for z in teacher_row]
        q_numerators = [math.exp(z / temperature) for z in student_row]
        p = [n / sum(p_numerators) for n in p_numerators]
        q = [n / sum(q_numerators) for n in q_numerators]
        total += sum(p_i * math.log(p_i / q_i) for p_i, q_i in zip(p, q))
    return temperature**2 * total / len(teacher)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_equals_the_hand_computed_value_with_the_t_squared_factor(temperature):
    got = float(distillation_loss(np.array(TEACHER_LOGITS), np.array(STUDENT_LOGITS), temperature))
    assert got == pytest.approx(hand_computed_loss(TEACHER_LOGITS, STUDENT_LOGITS, temperature), rel=1e-5)


def test_distillation_loss_at_t4_is_sixteen_times_the_plain_kl_of_the_softened_distributions():
    kl_only = hand_computed_loss(TEACHER_LOGITS, STUDENT_LOGITS, 4.0) / 16.0
    assert float(distillation_loss(np.array(TEACHER_LOGITS), np.array(STUDENT_LOGITS), 4.0)) == \
        pytest.approx(16.0 * kl_only, rel=1e-5)
    assert kl_only < hand_computed_loss(TEACHER_LOGITS, STUDENT_LOGITS, 1.0)   # softer targets, smaller KL


def small_net(dataset, filters, softmax=False, seed=0, batch_norm=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(dataset.input_shape)
    x = keras.layers.Conv2D(filters, 3, padding="same", name="conv")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(dataset.num_classes, activation="softmax" if softmax else None, name="head")(x)
    return keras.Model(inputs, outputs)


def test_distill_leaves_teacher_weights_unchanged(tiny_dataset, tiny_model):
    teacher = models.copy(tiny_model)
    before = [w.copy() for w in teacher.get_weights()]   # includes BatchNorm moving statistics
    distiller = Distiller(small_net(tiny_dataset, 4), teacher, temperature=4.0, alpha=0.1)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    history = distiller.fit(tiny_dataset.x_train, tiny_dataset.y_train, epochs=2, batch_size=32, verbose=0)
    assert history.history["distillation_loss"][-1] < history.history["distillation_loss"][0]
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_alpha_one_reduces_to_plain_training(tiny_dataset, tiny_model):
    student = small_net(tiny_dataset, 4, batch_norm=False)
    plain = models.copy(student)
    distiller = Distiller(student, tiny_model, temperature=4.0, alpha=1.0)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    keras.utils.set_random_seed(1)
    distiller.fit(tiny_dataset.x_train, tiny_dataset.y_train, epochs=2, batch_size=32, shuffle=False, verbose=0)
    training.compile_model(plain, 0.01)
    keras.utils.set_random_seed(1)
    plain.fit(tiny_dataset.x_train, tiny_dataset.y_train, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for distilled_weight, plain_weight in zip(student.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(distilled_weight, plain_weight, atol=1e-5)
    assert not np.allclose(student.get_weights()[0], small_net(tiny_dataset, 4, batch_norm=False).get_weights()[0])


def test_softmax_headed_teacher_gives_the_same_targets_as_its_logits(tiny_dataset):
    logits_teacher = small_net(tiny_dataset, 6, seed=3)
    softmax_teacher = small_net(tiny_dataset, 6, softmax=True, seed=3)
    softmax_teacher.set_weights(logits_teacher.get_weights())
    student = small_net(tiny_dataset, 4, seed=4)
    x, y = tiny_dataset.x_val[:32], tiny_dataset.y_val[:32]
    results = []
    for teacher in (logits_teacher, softmax_teacher):
        distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)
        distiller.compile(optimizer=keras.optimizers.Adam(0.01))
        results.append(distiller.evaluate(x, y, verbose=0, return_dict=True))
    assert results[0]["distillation_loss"] > 0
    assert results[1]["distillation_loss"] == pytest.approx(results[0]["distillation_loss"], rel=1e-4)


def test_softmax_headed_student_trains_under_distillation(tiny_dataset, tiny_model):
    student = small_net(tiny_dataset, 4, softmax=True)
    distiller = Distiller(student, tiny_model, temperature=2.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(0.02))
    history = distiller.fit(tiny_dataset.x_train, tiny_dataset.y_train, epochs=4, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_feature_distillation_adds_an_adapter_when_channels_differ(tiny_dataset, tiny_model):
    teacher = small_net(tiny_dataset, 8, seed=5)
    student = small_net(tiny_dataset, 4, seed=6)
    distiller = Distiller(student, teacher, features=[("features", "features", 2.0)])
    assert distiller.adapters[0] is not None and distiller.adapters[0].units == 8
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    history = distiller.fit(tiny_dataset.x_train, tiny_dataset.y_train, epochs=3, batch_size=32, verbose=0)
    assert history.history["feature_loss"][-1] < history.history["feature_loss"][0]
    assert not any("adapter" in w.name for w in student.weights)   # the adapter is not part of the student


def test_feature_distillation_names_the_layers_when_one_is_missing(tiny_dataset, tiny_model):
    with pytest.raises(ConfigError, match="student has no layer 'nope'; its layers are: .*features"):
        Distiller(small_net(tiny_dataset, 4), small_net(tiny_dataset, 8), features=[("features", "nope", 1.0)])


def test_distill_must_be_the_first_stage():
    with pytest.raises(ConfigError, match=r"stages\[1\]\.distill: distillation must be the first stage"):
        config.from_dict({"stages": [{"prune": {}}, {"distill": {"teacher": {"zoo": "digits_cnn"}}}]})


def test_distill_stage_records_teacher_student_alone_and_distilled(tiny_dataset, tmp_path):
    cfg = config.from_dict({"data": {"batch_size": 32}})
    context = stages.StageContext(cfg, tiny_dataset, tmp_path)
    params = config.DistillConfig(teacher={"zoo": "digits_cnn", "args": {"width": 0.5}}, teacher_epochs=3,
                                  epochs=2, baseline_student=True, learning_rate=0.01)
    student = small_net(tiny_dataset, 4)
    student, record = stages.apply("distill", student, params, context)
    details = record.details
    assert details["teacher"]["trained_here"] and details["teacher"]["params"] > details["student"]["params"]
    assert details["params_ratio"] == pytest.approx(details["student"]["params"] / details["teacher"]["params"],
                                                    abs=1e-4)
    assert 0.0 <= details["student_alone"]["accuracy"] <= 1.0
    assert details["kept"] in ("distilled", "student_alone")
    assert details[details["kept"]]["accuracy"] == record.metrics["accuracy"]
    assert record.metrics["accuracy"] == training.accuracy(student, tiny_dataset.x_test, tiny_dataset.y_test)
    assert set(details["history"]) >= {"loss", "student_loss", "distillation_loss", "feature_loss", "val_loss"}
    assert len(details["history"]["distillation_loss"]) == 2


def test_a_teacher_with_nothing_to_teach_gives_back_the_student_trained_alone(tiny_dataset, tmp_path):
    cfg = config.from_dict({"data": {"batch_size": 32}})
    context = stages.StageContext(cfg, tiny_dataset, tmp_path)
    params = config.DistillConfig(teacher={"zoo": "digits_cnn", "args": {"width": 0.5}}, teacher_epochs=0,
                                  epochs=3, alpha=0.0, learning_rate=0.01)   # an untrained teacher, soft targets only
    student, record = stages.apply("distill", small_net(tiny_dataset, 4), params, context)
    details = record.details
    assert details["kept"] == "student_alone"
    assert details["student_alone"]["validation_accuracy"] > details["distilled"]["validation_accuracy"]
    assert record.metrics["accuracy"] == details["student_alone"]["accuracy"]
    assert training.accuracy(student, tiny_dataset.x_test, tiny_dataset.y_test) == details["student_alone"]["accuracy"]
    assert any("does not beat the student trained alone" in note for note in details["notes"])


def test_an_ensemble_teacher_gives_the_log_of_its_members_mean_probabilities(tiny_dataset):
    logits_headed = small_net(tiny_dataset, 4, seed=1)
    softmax_headed = small_net(tiny_dataset, 6, softmax=True, seed=2)
    x = tiny_dataset.x_test[:16]
    expected = (tf.nn.softmax(logits_headed(x, training=False)).numpy() + softmax_headed(x, training=False).numpy()) / 2
    teacher = ensemble([logits_headed, softmax_headed], tiny_dataset.input_shape)
    outputs = teacher(x, training=False).numpy()
    np.testing.assert_allclose(np.exp(outputs), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tf.nn.softmax(outputs).numpy(), expected, rtol=1e-5, atol=1e-6)  # usable as logits
    assert not models.ends_with_softmax(teacher)
    assert models.count_params(teacher) == models.count_params(logits_headed) + models.count_params(softmax_headed)


def test_an_ensemble_teacher_keeps_the_ranking_of_classes_every_member_finds_unlikely(tiny_dataset):
    """Probabilities far below float32's clipping floor still differ after averaging (the dark knowledge)."""
    inputs = keras.Input((3,))
    confident = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")(inputs))
    other = keras.models.clone_model(confident)
    other.set_weights(confident.get_weights())
    teacher = ensemble([confident, other], (3,))
    outputs = teacher(np.array([[40.0, 10.0, 0.0]], dtype=np.float32)).numpy()[0]
    # log_softmax of [40, 10, 0]: the two unlikely classes sit 30 and 40 below the first.
    np.testing.assert_allclose(outputs - outputs[0], [0.0, -30.0, -40.0], atol=1e-4)


def test_distill_with_a_teacher_ensemble_records_each_member_and_measures_the_ensemble(tiny_dataset, tmp_path):
    cfg = config.from_dict({"data": {"batch_size": 32}})
    context = stages.StageContext(cfg, tiny_dataset, tmp_path)
    params = config.DistillConfig(teacher={"zoo": "digits_cnn", "args": {"width": 0.25}}, teacher_epochs=2,
                                  epochs=1, learning_rate=0.01, teacher_ensemble=3)
    _, record = stages.apply("distill", small_net(tiny_dataset, 4), params, context)
    teacher = record.details["teacher"]
    single = models.count_params(models.build(params.teacher, tiny_dataset.input_shape, tiny_dataset.num_classes))
    assert teacher["params"] == 3 * single
    assert [member["seed"] for member in teacher["members"]] == [1, 1001, 2001]   # run seed 0, first stage
    assert len({member["accuracy"] for member in teacher["members"]} | {teacher["accuracy"]}) >= 2
    assert teacher["test_errors"] == round((1 - teacher["accuracy"]) * len(tiny_dataset.y_test))
    assert record.details["targets_from"]["teacher"] == "log of the members' mean probabilities"
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("teacher")) == \
        ["teacher_1", "teacher_2", "teacher_3"]
    markdown = "\n".join(report._distillation_lines([record]))
    assert f"| teacher (ensemble of 3) | {teacher['params']:,} |" in markdown
    assert "their own test errors: " + ", ".join(str(m["test_errors"]) for m in teacher["members"]) in markdown


@pytest.mark.parametrize("reduction, sentence", [
    (0.3333, "; 33% fewer test errors than the student alone."),
    (-1.1111, "; 111% more test errors than the student alone."),
    (0.0, "; as many test errors as the student alone."),
    (0.0045, "; 0.45% fewer test errors than the student alone."),   # 1 error fewer than 222: not "0%"
    (-0.0045, "; 0.45% more test errors than the student alone."),
    (None, " epochs."),
])
def test_the_distillation_summary_says_fewer_or_more_errors_than_the_student_alone(reduction, sentence):
    teacher = {"params": 100, "accuracy": 0.9, "test_errors": 10}
    details = {"teacher": teacher, "distilled": {"accuracy": 0.8, "test_errors": 20},
               "student": {"params": 10}, "params_ratio": 0.1, "temperature": 4.0, "alpha": 0.1, "epochs": 2,
               "error_reduction": reduction}
    record = report.StageRecord("distill", 10, 10, {"accuracy": 0.8}, 1.0, details=details)
    summary = next(line for line in report._distillation_lines([record]) if line.startswith("Student/teacher"))
    assert summary.endswith(sentence)


@pytest.mark.parametrize("extra, message", [
    ({"teacher": {"path": "teacher.h5"}}, "a teacher loaded from path is one model"),
    ({"features": [{"teacher": "a", "student": "b"}]}, "features match the layers of one teacher"),
    ({"teacher_epochs": 0}, "would average untrained teachers"),
])
def test_a_teacher_ensemble_that_cannot_be_trained_here_is_a_config_error(extra, message):
    distill = {"teacher": {"zoo": "digits_cnn"}, "teacher_ensemble": 2, **extra}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.distill.*" + message):
        config.from_dict({"stages": [{"distill": distill}]})


def test_distill_then_distilled_qat_runs_end_to_end_and_the_report_shows_both(tmp_path):
    from conftest import tflite_accuracy
    from edgecomp import data, pipeline

    cfg = config.from_dict({
        "name": "kd", "output_dir": str(tmp_path),
        "data": {"source": "digits", "calibration_samples": 50},
        "model": {"zoo": "digits_cnn", "args": {"width": 0.25}},
        "train": {"epochs": 1, "stop_if_not_learned": False},
        "stages": [{"distill": {"teacher": {"zoo": "digits_cnn", "args": {"width": 0.5}}, "teacher_epochs": 1,
                                "epochs": 1, "baseline_student": True}},
                   {"quantize": {"epochs": 1, "distill_from": "float"}}],
        "targets": [{"cpu": {"quantization": "int8"}}],
        "benchmark": {"runs": 5, "warmup": 1},
    })
    report = pipeline.run(cfg)
    distill_record, quantize_record = report.stages[1], report.stages[2]
    assert distill_record.stage == "distill" and distill_record.details["student_alone"]["test_errors"] >= 0
    assert quantize_record.details["distill_from"]["teacher"] == "float"
    assert len(quantize_record.details["distill_from"]["history"]["distillation_loss"]) == 1
    assert (cfg.run_dir / "checkpoints" / "01_distill" / "model.h5").is_file()
    markdown = (cfg.run_dir / "report.md").read_text()
    assert "## Distillation" in markdown and "| student alone |" in markdown and "distilled from the float" in markdown
    dataset = data.load(cfg.data, cfg.seed)
    assert report.targets[0].metrics["accuracy"] == pytest.approx(
        tflite_accuracy(cfg.run_dir / report.targets[0].path, dataset), abs=1e-9)
