"""Property test: however a valid config is mutated, the answer is a Config or one clear line."""

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecomp import config
from edgecomp.errors import ConfigError

BASE = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "deep_compression.yaml").read_text())

values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
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
