"""Every check of a workflow config that runs before any job: :func:`workflow_errors`, one line per problem.

rules/common.smk calls it once and stops with all the lines; each names the config key at fault. The schema comes
first: a config that violates it is reported by its schema problems alone (the later checks read the defaults the
schema fills in).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kicl.conditions import condition_errors, condition_tasks, decision_partner, partner_problems, selected_conditions
from kicl.config import ConfigError, catalog_errors, config_errors, load_schema, with_defaults
from kicl.prompts.options import Protocol


def workflow_errors(config: Mapping, schema: Mapping | str | os.PathLike | None = None) -> list[str]:
    """All problems of ``config`` (a workflow config; ``schema``: default schemas/config.schema.yaml), one line each,
    in a fixed order: schema, conditions, protocols per (condition, task), catalogs and selection, theory_icl,
    causal."""
    schema = load_schema(schema)
    problems = config_errors(config, schema)
    if problems:
        return problems
    config = with_defaults(config, schema)
    problems = condition_problems(config, schema)
    protocols, protocol_lines = resolved_protocols(config, schema)
    problems += protocol_lines
    problems += selection_problems(config, protocols)
    problems += theory_icl_problems(config)
    problems += causal_problems(config)
    return list(dict.fromkeys(problems))


def _known(catalog: Mapping) -> str:
    return ", ".join(sorted(catalog))


def condition_problems(config: Mapping, schema=None) -> list[str]:
    """The selected conditions, the reference, conditions_stage.tasks and conditions_stage.head_maps name
    catalog entries, and each selected condition's overrides are protocol keys with valid values."""
    conditions, selected = config["conditions"], selected_conditions(config)
    reference = config["conditions_stage"]["reference"]
    problems = [
        f"{'run.conditions' if name in config['run']['conditions'] else 'analysis.decision.partner'}: {name!r} is not "
        f"in the conditions catalog (known: {_known(conditions)})"
        for name in selected
        if name not in conditions
    ]
    if reference not in selected:
        problems.append(f"conditions_stage.reference: {reference!r} is not in run.conditions ({', '.join(selected)})")
    problems += [
        f"conditions_stage.tasks: {task!r} is not in the tasks catalog (known: {_known(config['tasks'])})"
        for task in config["conditions_stage"]["tasks"]
        if task not in config["tasks"]
    ]
    problems += [
        f"conditions_stage.head_maps: {name!r} is not in the conditions catalog"
        for name in config["conditions_stage"]["head_maps"]
        if name not in conditions
    ]
    return problems + condition_errors(config, schema, [name for name in selected if name in conditions])


def resolved_protocols(config: Mapping, schema=None) -> tuple[dict[str, Protocol], list[str]]:
    """The :class:`Protocol` of every selected condition that has one, and the problems of the others and of each
    (condition, task) pair (label count, other_task, rewrites file), then of the decision rule's partner."""
    from kicl.prompts.ood import RewritesFileError, check_rewrites_file, rewrites_path

    protocols, problems = {}, []
    tasks_of = condition_tasks(config)
    for name in selected_conditions(config):
        if name not in config["conditions"] or condition_errors(config, schema, [name]):
            continue  # condition_problems names it
        try:
            protocols[name] = protocol = Protocol.from_config(config, name)
        except ConfigError as error:
            problems += [f"condition {name!r}: {line}" for line in error.problems]
            continue
        for task in [task for task in tasks_of[name] if task in config["tasks"]]:
            where = f"condition {name!r}, task {task!r}"
            n_classes = len(config["tasks"][task]["label_names"])
            problems += [f"{where}: {line}" for line in protocol.task_problems(n_classes)]
            if protocol.inputs == "other_task" and protocol.other_task not in config["tasks"]:
                problems.append(f"{where}: protocol.other_task {protocol.other_task!r} is not in the tasks catalog")
            if protocol.test_inputs == "rewrites":
                try:
                    check_rewrites_file(rewrites_path(protocol, task), protocol.rewrite_type)
                except (RewritesFileError, OSError) as error:
                    problems.append(f"{where}: {error}")
    plain = {name: protocol.as_dict() for name, protocol in protocols.items()}
    problems += partner_problems(plain, config["conditions_stage"]["reference"], decision_partner(config))
    return protocols, problems


def retrieval_encoder(protocol: Protocol) -> str | None:
    """The sentence encoder that ranks or orders the demonstrations, where the protocol needs one; else None."""
    from kicl.prompts.retrieval import needs_encoder

    return protocol.retrieval_encoder if needs_encoder(protocol) else None


def encoders_in_use(config: Mapping, protocols: Mapping[str, Protocol]) -> list[str]:
    """run.encoders, then the retrieval encoders the protocols need, each once."""
    needed = [retrieval_encoder(protocol) for protocol in protocols.values()]
    return list(dict.fromkeys(list(config["run"]["encoders"]) + [name for name in needed if name]))


def selection_problems(config: Mapping, protocols: Mapping[str, Protocol]) -> list[str]:
    """Selected names exist in their catalogs, their source sections are there (kicl.config.catalog_errors), the
    selected task specs are coherent, the protocol has test points and every retrieval encoder is in the catalog."""
    from kicl.data.tasks import TaskError, check_task_spec

    run = config["run"]
    problems = catalog_errors(
        config, {"tasks": run["tasks"], "models": run["models"], "encoders": encoders_in_use(config, protocols)}
    )
    for kind in ("tasks", "models", "encoders"):
        problems += [
            f"run.{kind}: {name!r} is not in the {kind} catalog (known: {_known(config[kind])})"
            for name in run[kind]
            if name not in config[kind]
        ]
    for name in run["tasks"]:
        if name in config["tasks"] and not any(p.startswith(f"config key tasks.{name}.") for p in problems):
            try:
                check_task_spec(name, config["tasks"][name])
            except TaskError as error:
                problems.append(str(error))
    for condition, protocol in protocols.items():
        if protocol.retrieval_encoder not in config["encoders"]:
            overridden = "retrieval_encoder" in (config["conditions"][condition] or {})
            problems.append(
                f"{f'conditions.{condition}' if overridden else 'protocol'}.retrieval_encoder: "
                f"{protocol.retrieval_encoder!r} is not in the encoders catalog (known: {_known(config['encoders'])})"
            )
    return problems


def theory_icl_problems(config: Mapping) -> list[str]:
    """An enabled theory_icl section: consistent (kicl.theory.icl_options.TheoryICLOptions.problems), enough chain
    test rows for the protocol's test points, and its chain model and task in their catalogs."""
    from kicl.theory.icl_options import TheoryICLOptions

    section = config["theory_icl"]
    if not section["enabled"]:
        return []
    try:
        problems = []
        TheoryICLOptions.from_config(config)
    except ConfigError as error:
        problems = list(error.problems)
    chain = section["chain"]
    points = config["protocol"]["n_select"] + config["protocol"]["n_heldout"]
    if chain["n_eval"] < points:
        problems.append(
            f"theory_icl.chain.n_eval: {chain['n_eval']} test rows cannot give "
            f"protocol.n_select + protocol.n_heldout = {points} test points to the chain's task"
        )
    for kind, name in (("models", chain["model"]), ("tasks", chain["task"])):
        if name not in config[kind]:
            problems.append(
                f"theory_icl.chain.{kind[:-1]}: {name!r} is not in the {kind} catalog (known: {_known(config[kind])})"
            )
    return problems


def causal_problems(config: Mapping) -> list[str]:
    """causal.tasks name catalog entries."""
    unknown = [task for task in config["causal"]["tasks"] if task not in config["tasks"]]
    if not unknown:
        return []
    return [f"causal.tasks: {unknown} are not in the tasks catalog (known: {_known(config['tasks'])})"]
