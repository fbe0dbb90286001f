"""Fuzzing the ``.tflite`` loading path: every input loads or is a ``ModelError``; this process survives.

Hypothesis draws random bytes, and mutations (bit flips, truncations, overwritten,
deleted and inserted spans) of real small models converted once per session. Each
goes through ``runtime.make_interpreter``, the check-then-load that evaluation, the
verifiers and bench use (flatbuffer structure, then one load-and-run in a child
process). Inputs that load must then evaluate and verify without any other error.

Fixed budget: ``max_examples`` below, ``deadline=None``, no database; about 30 s
on 2 cores. Each test prints its executions by outcome (run pytest with ``-s``).
"""

import collections

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecomp import runtime
from edgecomp.errors import ModelError
from edgecomp.targets import cpu

RANDOM_EXAMPLES = 300
MUTATED_EXAMPLES = 100
BUDGET = dict(deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])

WORDS = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x01\x00\x00\x00"]
# Flips and overwrites keep the layout (they reach the interpreter); the others shift or cut it.
KINDS = ("flip", "flip", "flip", "overwrite", "overwrite", "truncate", "delete", "insert")


def mutate(data, content: bytes) -> bytes:
    """One to three mutations drawn with hypothesis' ``data``; positions anywhere in the file."""
    content = bytearray(content)
    spots = data.draw(st.randoms(use_true_random=True), label="positions")  # seeded, uniform over the file
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        kind = data.draw(st.sampled_from(KINDS), label="kind")
        at = spots.randrange(max(len(content), 1))
        if kind == "flip" and content:
            content[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif kind == "truncate":
            del content[at:]
        elif kind == "overwrite":
            span = data.draw(st.binary(min_size=1, max_size=16) | st.sampled_from(WORDS), label="bytes")
            content[at : at + len(span)] = span
        elif kind == "delete":
            del content[at : at + data.draw(st.integers(1, 64), label="length")]
        elif kind == "insert":
            content[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
    return bytes(content)


def load_or_refuse(content: bytes, outcomes: collections.Counter) -> None:
    """The property: a ``ModelError`` of one line naming the file, or a model that works."""
    try:
        interpreter = runtime.make_interpreter(content, where="fuzzed.tflite")
    except ModelError as error:
        message = str(error)
        assert message.startswith("fuzzed.tflite") and "\n" not in message, message
        outcomes["refused: " + ("structure" if "TFLite model:" in message else
                                "crashed in the child" if "crashed" in message else "interpreter")] += 1
        return
    shape = interpreter.get_input_details()[0]["shape"]
    try:
        runtime.predict(content, np.zeros((3, *shape[1:]), np.float32), batch_size=2, where="fuzzed.tflite")
    except ModelError as error:  # e.g. a fixed batch that cannot take one sample
        assert "\n" not in str(error)
    result = cpu.verify(content, "float32")
    assert isinstance(result["ok"], bool)
    outcomes["loaded"] += 1


def report(name: str, outcomes: collections.Counter, record_property) -> None:
    total = sum(outcomes.values())
    record_property(f"{name}_executions", total)
    print(f"\nfuzz {name}: {total} executions: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))


def test_fuzzed_random_bytes_load_or_are_a_model_error(record_property):
    outcomes = collections.Counter()

    @settings(max_examples=RANDOM_EXAMPLES, **BUDGET)
    @given(prefix=st.sampled_from([b"", b"\x10\x00\x00\x00TFL3", b"\x1c\x00\x00\x00TFL3\x14\x00\x20\x00"]),
           body=st.binary(max_size=4096))
    def check(prefix, body):
        load_or_refuse(prefix + body, outcomes)

    check()
    report("random_bytes", outcomes, record_property)
    assert sum(outcomes.values()) >= RANDOM_EXAMPLES


def test_fuzzed_mutations_of_a_real_model_load_or_are_a_model_error(converted, record_property):
    bases = {"float32": converted("float32"), "int8": converted("int8")}
    outcomes = collections.Counter()

    @settings(max_examples=MUTATED_EXAMPLES, **BUDGET)
    @given(base=st.sampled_from(sorted(bases)), data=st.data())
    def check(base, data):
        load_or_refuse(mutate(data, bases[base]), outcomes)

    check()
    report("mutated_models", outcomes, record_property)
    assert sum(outcomes.values()) >= MUTATED_EXAMPLES
    assert outcomes["loaded"] and outcomes["refused: structure"], outcomes  # both sides were reached
