"""Readable config validation: every JSON-schema violation as one line that names the config key."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from typing import ClassVar

import jsonschema
import yaml


def _key_path(path) -> str:
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "<top level>"


#: top-level config sections that were renamed, old name -> new name (the old name is an error naming the new one)
RENAMED_KEYS = {"ablation": "conditions_stage"}


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One or more 'config key a.b: problem' lines for a jsonschema error."""
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        prefix = "" if key == "<top level>" else f"{key}."
        return [
            f"config key {prefix}{name}: "
            + (f"renamed: it is now {RENAMED_KEYS[name]}:" if not prefix and name in RENAMED_KEYS else "unknown key")
            + f" (allowed here: {', '.join(allowed)})"
            for name in unexpected
        ]
    return [f"config key {key}: {error.message}"]


def config_errors(config: Mapping, schema: Mapping | str | os.PathLike) -> list[str]:
    """All violations of ``schema`` (a dict or a YAML/JSON file) in ``config``, sorted by key, one line each."""
    if not isinstance(schema, Mapping):
        with open(schema) as handle:
            schema = yaml.safe_load(handle)
    validator_class = jsonschema.validators.validator_for(schema)
    errors = validator_class(schema).iter_errors(dict(config))
    return sorted(line for error in errors for line in _describe(error))


class ConfigError(ValueError):
    """A config section that cannot be used; ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


def with_defaults(config: Mapping, schema: Mapping | str | os.PathLike | None = None) -> dict:
    """A deep copy of ``config`` with the schema defaults filled in where keys are missing, as Snakemake's
    ``validate(config, schema)`` fills them (``config`` must already satisfy the schema)."""
    schema = load_schema(schema)
    base = jsonschema.validators.validator_for(schema)
    properties = base.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, node):
        if isinstance(instance, dict):
            for key, child in props.items():
                if "default" in child:
                    instance.setdefault(key, copy.deepcopy(child["default"]))
        yield from properties(validator, props, instance, node)

    filled = copy.deepcopy(dict(config))
    jsonschema.validators.extend(base, {"properties": set_defaults})(schema).validate(filled)
    return filled


def section_values(config: Mapping, name: str, schema: Mapping | str | os.PathLike | None = None) -> dict:
    """The ``name`` section of ``config`` over its schema defaults, checked against the section's schema; raises
    :class:`ConfigError` listing every violation (``config key <name>.<key>: ...``)."""
    node = load_schema(schema)["properties"][name]
    wrapper = {"type": "object", "properties": {name: node}}
    section = {name: copy.deepcopy(dict(config.get(name) or {}))}
    problems = config_errors(section, wrapper)
    if problems:
        raise ConfigError(problems)
    return with_defaults(section, wrapper)[name]


class SectionOptions:
    """The typed, frozen object of one config section (``SECTION``), every one built the same way:
    :meth:`from_config` takes the section over its schema defaults, checked against the section's schema
    (:func:`section_values`), makes the object (:meth:`build`) and runs only the cross-field checks the schema
    cannot express (:meth:`problems`); every problem is raised at once as one :class:`ConfigError`."""

    SECTION: ClassVar[str]

    @classmethod
    def build(cls, values: dict):
        """The object from the section's checked values; subclasses convert lists and nested sections here."""
        return cls(**values)

    @classmethod
    def from_config(cls, config: Mapping):
        """The ``SECTION`` section of ``config``; raises :class:`ConfigError` listing every problem."""
        options = cls.build(section_values(config, cls.SECTION))
        problems = options.problems()
        if problems:
            raise ConfigError(problems)
        return options

    @classmethod
    def of(cls, section: Mapping):
        """The object of a bare section (keys it lacks take the schema defaults)."""
        return cls.from_config({cls.SECTION: section})

    def problems(self) -> list[str]:
        """What the schema cannot express, one line each naming the key (none by default)."""
        return []


def schema_enum(*path: str, schema: Mapping | str | os.PathLike | None = None) -> tuple:
    """The allowed values of one schema key, e.g. ``schema_enum("protocol", "labels")``: its ``enum`` (or that of its
    ``items`` for an array of choices), as a tuple in schema order."""
    node = load_schema(schema)
    for key in path:
        node = node["properties"][key]
    return tuple(node["enum"] if "enum" in node else node["items"]["enum"])


#: config catalog -> the sources an entry may name; each source needs the section of the same name
CATALOG_SOURCES = {
    "tasks": ("hub", "local", "packaged"),
    "models": ("hub", "local", "packaged_gguf"),
    "encoders": ("packaged", "hub", "local"),
}
#: the folder or file key of each catalog's local section (checked to exist before any job)
LOCAL_PATH_KEY = {"tasks": "dir", "models": "path", "encoders": "path"}
#: relative folders that the workflow itself fills (e.g. a model it trains): not checked before the run
WORKFLOW_OUTPUT_DIRS = ("results/", "resources/")


def catalog_errors(config: Mapping, in_use: Mapping[str, list[str]] | None = None) -> list[str]:
    """Problems that the JSON schema cannot express, one line each naming the config key.

    * an entry of ``tasks``/``models``/``encoders`` whose ``source`` has no section of that name (e.g.
      ``models.x.source: hub`` without ``models.x.hub``: a config override merges into the default entry, so the
      old source's section stays and the new one is missing);
    * a ``local`` source whose folder does not exist and is not one the workflow makes (under results/ or
      resources/); only for the entries in ``in_use`` (kind -> names; all entries when None);
    * ``protocol.n_select + protocol.n_heldout`` of 0 (no test points).
    """
    problems = []
    for kind, sources in CATALOG_SOURCES.items():
        catalog = config.get(kind) or {}
        names = list(catalog) if in_use is None else [name for name in in_use.get(kind, []) if name in catalog]
        for name in names:
            spec = catalog[name]
            source = spec.get("source")
            if source not in sources:
                continue  # the schema names it
            if not isinstance(spec.get(source), Mapping):
                problems.append(
                    f"config key {kind}.{name}.{source}: missing; {kind}.{name}.source is {source!r}, which needs "
                    f"the section {kind}.{name}.{source} ({_section_keys(kind, source)})"
                )
            elif source == "local":
                key = LOCAL_PATH_KEY[kind]
                path = spec["local"].get(key)
                made_here = str(path).replace("\\", "/").startswith(WORKFLOW_OUTPUT_DIRS)
                if path is not None and not made_here and not os.path.exists(path):
                    problems.append(f"config key {kind}.{name}.local.{key}: {path!r} does not exist")
    protocol = config.get("protocol") or {}
    if protocol.get("n_select", 1) + protocol.get("n_heldout", 1) < 1:
        problems.append(
            "config keys protocol.n_select + protocol.n_heldout: 0 test points; set at least one of them above 0"
        )
    return problems


def _section_keys(kind: str, source: str) -> str:
    required = {
        ("tasks", "hub"): "path",
        ("tasks", "local"): "dir",
        ("tasks", "packaged"): "package, version, sha256, member, parser",
        ("models", "hub"): "id",
        ("models", "local"): "path",
        ("models", "packaged_gguf"): "parts",
        ("encoders", "hub"): "id",
        ("encoders", "local"): "path",
        ("encoders", "packaged"): "package, version, sha256, member_dir",
    }
    return "required: " + required[(kind, source)]


# ---- Defaults and device/dtype resolution (one place each)

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "config.schema.yaml")


def load_schema(schema: Mapping | str | os.PathLike | None = None) -> Mapping:
    """The config schema: ``schema`` itself if a dict, else the YAML file (default: schemas/config.schema.yaml)."""
    if isinstance(schema, Mapping):
        return schema
    return copy.deepcopy(_read_schema(str(schema or SCHEMA_PATH)))


@functools.lru_cache(maxsize=4)
def _read_schema(path: str) -> Mapping:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _defaults_of(node: Mapping):
    if "default" in node and not (node.get("type") == "object" and node.get("properties")):
        return node["default"]
    if node.get("type") == "object" and node.get("properties"):
        base = dict(node.get("default") or {})
        for key, child in node["properties"].items():
            if "default" in child or child.get("properties"):
                base.setdefault(key, _defaults_of(child))
        return base
    return node.get("default")


def defaults_for(section: str, schema: Mapping | str | os.PathLike | None = None) -> dict:
    """The defaults of one top-level config section (e.g. ``capture``), read from schemas/config.schema.yaml.

    Nested objects are filled in key by key. The schema is the only place where a default is written down.
    """
    properties = load_schema(schema).get("properties", {})
    if section not in properties:
        raise KeyError(f"config section {section!r} is not in the schema (known: {', '.join(sorted(properties))})")
    return _defaults_of(properties[section])
