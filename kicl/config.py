"""Readable config validation: every JSON-schema violation as one line that names the config key."""

from __future__ import annotations

import os
from collections.abc import Mapping

import jsonschema
import yaml


def _key_path(path) -> str:
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "<top level>"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One or more 'config key a.b: problem' lines for a jsonschema error."""
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        prefix = "" if key == "<top level>" else f"{key}."
        return [f"config key {prefix}{name}: unknown key (allowed here: {', '.join(allowed)})" for name in unexpected]
    return [f"config key {key}: {error.message}"]


def config_errors(config: Mapping, schema: Mapping | str | os.PathLike) -> list[str]:
    """All violations of ``schema`` (a dict or a YAML/JSON file) in ``config``, sorted by key, one line each."""
    if not isinstance(schema, Mapping):
        with open(schema) as handle:
            schema = yaml.safe_load(handle)
    validator_class = jsonschema.validators.validator_for(schema)
    errors = validator_class(schema).iter_errors(dict(config))
    return sorted(line for error in errors for line in _describe(error))


def check_config(config: Mapping, schema: Mapping | str | os.PathLike) -> None:
    """Raise ValueError listing every violation, so a bad config stops before any job runs."""
    lines = config_errors(config, schema)
    if lines:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(lines))
