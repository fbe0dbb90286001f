"""Reading a tool's YAML file: the file, its ``--set`` overrides, then its schema.

The study and the recipe search read their files this way, with the run config's
bounded YAML reader and override syntax (``edgecomp.config``), so every tool refuses
a bad file with the same one-line errors: ``<path>: <key>: <what is wrong>``.

Example:
    >>> from edgecomp import config_file, study
    >>> parsed = config_file.load_file("configs/study_digits.yaml", ["base.train.epochs=3"],
    ...                                study.StudyConfig)                        # doctest: +SKIP
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Callable, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from edgecomp import config
from edgecomp.errors import ConfigError

Schema = TypeVar("Schema", bound=BaseModel)


def load_file(path: str | Path, overrides: typing.Sequence[str], schema: type[Schema],
              prepare: Optional[Callable[[dict], None]] = None) -> Schema:
    """Reads a YAML file, applies ``key.path=value`` overrides and validates it against ``schema``.

    Args:
        path: the YAML file.
        overrides: ``"a.b=value"`` strings, as ``--set`` gives them; values are parsed as YAML.
        schema: the pydantic model the file must fit.
        prepare: called with the raw map after the overrides and before validation: it may
            add what a tool's own flags say, or refuse what the schema's message would not explain.

    Returns:
        The validated ``schema`` instance.

    Raises:
        ConfigError: one line naming the file, the key, the value and what is allowed.
    """
    raw = config.read_yaml(path)
    for override in overrides:
        config.apply_override(raw, override)
    if prepare is not None:
        prepare(raw)
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {config.format_validation_error(error)}") from None
