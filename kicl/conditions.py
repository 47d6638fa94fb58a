"""Experimental conditions: named sets of overrides of the ``protocol:`` config section.

A condition (config ``conditions:``, selected by ``run.conditions``) changes how the demonstrations of a prompt
are chosen, ordered, labelled or written, or how the test input is written; everything else stays the
protocol's. The keys that fix the test points (:data:`PAIRING_KEYS`) cannot be overridden, so all conditions
of a (model, task) share their test points and every comparison between them is paired.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from kicl.config import config_errors, load_schema

#: protocol keys that choose the test points: the same in every condition (paired by construction)
PAIRING_KEYS = ("seed", "n_select", "n_heldout")


def condition_protocol(config: Mapping, condition: str) -> dict:
    """The effective protocol of ``condition``: ``protocol:`` with the condition's overrides on top."""
    overrides = (config.get("conditions") or {}).get(condition)
    if overrides is None:
        known = ", ".join(sorted(config.get("conditions") or {}))
        raise KeyError(f"condition {condition!r} is not in the conditions catalog (known: {known})")
    protocol = copy.deepcopy(dict(config.get("protocol") or {}))
    protocol.update(copy.deepcopy(dict(overrides)))
    return protocol


def condition_errors(config: Mapping, schema=None, names: list[str] | None = None) -> list[str]:
    """One line per problem of the conditions in ``names`` (default: all), naming ``conditions.<name>.<key>``.

    Each condition's overrides must be protocol keys other than :data:`PAIRING_KEYS`, and the effective protocol
    must satisfy the ``protocol`` section of ``schema`` (a dict or a file; default: schemas/config.schema.yaml).
    Only problems in the overridden keys are reported here; those of ``protocol:`` itself are reported as such.
    """
    catalog = config.get("conditions") or {}
    protocol_schema = load_schema(schema)["properties"]["protocol"]
    allowed = set(protocol_schema.get("properties", {}))
    problems = []
    for name in catalog if names is None else names:
        if name not in catalog:
            continue  # the selection check names it
        overrides = catalog[name] or {}
        if not isinstance(overrides, Mapping):
            problems.append(f"config key conditions.{name}: must be a mapping of protocol keys, got {overrides!r}")
            continue
        for key in overrides:
            if key in PAIRING_KEYS:
                problems.append(
                    f"config key conditions.{name}.{key}: a condition cannot change the test points "
                    f"({', '.join(PAIRING_KEYS)} are set once, in protocol:)"
                )
            elif key not in allowed:
                problems.append(
                    f"config key conditions.{name}.{key}: not a protocol key (allowed: {', '.join(sorted(allowed))})"
                )
        merged = condition_protocol(config, name)
        wrapper = {"type": "object", "properties": {"protocol": protocol_schema}}
        for line in config_errors({"protocol": merged}, wrapper):
            key = line.removeprefix("config key protocol.").split(":")[0].split(".")[0].split("[")[0]
            if key in overrides and key in allowed:
                problems.append(line.replace("config key protocol.", f"config key conditions.{name}.", 1))
    return problems


def decision_partner(config: Mapping) -> str | None:
    """The label-flip condition of the decision rule (`analysis.decision.partner`), or None."""
    return config.get("analysis", {}).get("decision", {}).get("partner")


def selected_conditions(config: Mapping) -> list[str]:
    """``run.conditions``, plus the decision rule's label-flip partner where it is not selected."""
    selected = list(config["run"]["conditions"])
    partner = decision_partner(config)
    return selected + ([partner] if partner and partner not in selected else [])


def condition_tasks(config: Mapping) -> dict[str, list[str]]:
    """Selected condition -> the tasks it runs on: the reference and the decision rule's label-flip partner on
    every ``run.tasks``, the others on ``conditions_stage.tasks`` (those that are in ``run.tasks``), in selection
    order."""
    tasks = list(config["run"]["tasks"])
    everywhere = {config["conditions_stage"]["reference"], decision_partner(config)}
    stage_tasks = [task for task in config["conditions_stage"]["tasks"] if task in tasks]
    return {condition: (tasks if condition in everywhere else stage_tasks) for condition in selected_conditions(config)}


def partner_problems(protocols: Mapping[str, Mapping], reference: str, partner: str | None) -> list[str]:
    """The label-flip partner must be the reference's protocol with `labels: flipped` and nothing else changed."""
    if not partner or partner not in protocols or reference not in protocols:
        return []
    expected = {**protocols[reference], "labels": "flipped"}
    actual = protocols[partner]
    differing = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if not differing:
        return []
    return [
        f"analysis.decision.partner: condition {partner!r} must be the reference {reference!r} with every shown "
        f"label flipped (labels: flipped) and nothing else changed; it differs in {', '.join(differing)}"
    ]
