"""Property test: however a valid config is mutated, the answer is a Config or one clear line.

A Config that passes holds only numbers a run can use: finite, and within
2**31 - 1 (the largest bound any key has), whatever huge integer, inf or nan
was put in (issue 23: seed 2**32, timeout_s .inf and image sizes of 100000 passed).
"""

import copy
import math
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecomp import config
from edgecomp.errors import ConfigError

BASE = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "deep_compression.yaml").read_text())

HUGE_INTEGERS = st.sampled_from([2**31, 2**32, 2**63, 2**64, 10**30, -(2**63)])
values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | HUGE_INTEGERS
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([math.inf, -math.inf, math.nan, 1e300])
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from paths(child, (*prefix, index))


ALL_PATHS = [p for p in paths(BASE) if p]


def numbers(node, path=()):
    """(path, value) of every int and float in ``node``, skipping ``args`` (a builder's free keyword arguments)."""
    if isinstance(node, dict):
        for key, child in node.items():
            if key != "args":
                yield from numbers(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from numbers(child, (*path, index))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def mutate(raw, path, action, value):
    raw = copy.deepcopy(raw)
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(ALL_PATHS), action=st.sampled_from(["replace", "delete", "add"]), value=values)
def test_mutated_config_is_valid_or_one_line_config_error(path, action, value):
    raw = mutate(BASE, path, action, value)
    try:
        cfg = config.from_dict(raw)
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message
        assert "Traceback" not in message
    else:
        assert isinstance(cfg, config.Config)
        for where, number in numbers(config.to_dict(cfg)):
            assert math.isfinite(number) and abs(number) <= 2**31 - 1, (where, number)
