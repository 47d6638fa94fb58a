# Config loading and validation, wildcard constraints and target helpers. No rules here.
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from kicl.config import catalog_errors, config_errors, resolve_device, resolve_dtype

# One line per problem, naming the key, before any job runs
# ("config key theory.n_hmms: -1 is less than the minimum of 1");
# snakemake's validate then fills in the schema defaults.
_config_problems = config_errors(
    config, workflow.source_path("../schemas/config.schema.yaml")
)
if _config_problems:
    raise WorkflowError("invalid configuration:\n  " + "\n  ".join(_config_problems))
validate(config, schema="../schemas/config.schema.yaml")


def theory_outputs():
    return [
        "results/theory/table3.csv",
        "results/theory/table3.md",
        "results/theory/table3.html",
        "results/theory/table3.png",
        "results/theory/table3_figure.csv",
    ]


# ---- Tasks, models, encoders and prompts (rules/data.smk, rules/models.smk, rules/prompts.smk)
from kicl.prompts.retrieval import is_retrieval
from kicl.data.tasks import TaskError, check_task_spec, local_split_file

SELECTED_TASKS = list(config["run"]["tasks"])
SELECTED_MODELS = list(config["run"]["models"])
SELECTED_ENCODERS = list(config["run"]["encoders"])
# the sentence encoder that ranks demonstrations, needed only by the retrieval strategies (nearest/farthest)
RETRIEVAL_ENCODER = (
    config["protocol"]["retrieval_encoder"]
    if is_retrieval(config["protocol"]["demo_strategy"])
    else None
)
ENCODERS_IN_USE = SELECTED_ENCODERS + [
    name for name in [RETRIEVAL_ENCODER] if name and name not in SELECTED_ENCODERS
]


def _check_selection():
    """Selected names exist in their catalogs, their source sections are there (kicl.config.catalog_errors),
    the selected task specs are coherent and the protocol has test points."""
    problems = catalog_errors(
        config,
        {
            "tasks": SELECTED_TASKS,
            "models": SELECTED_MODELS,
            "encoders": ENCODERS_IN_USE,
        },
    )
    for kind, names in (
        ("tasks", SELECTED_TASKS),
        ("models", SELECTED_MODELS),
        ("encoders", SELECTED_ENCODERS),
    ):
        for name in names:
            if name not in config[kind]:
                problems.append(
                    f"run.{kind}: {name!r} is not in the {kind} catalog "
                    f"(known: {', '.join(sorted(config[kind]))})"
                )
    for name in SELECTED_TASKS:
        if name in config["tasks"] and not any(
            p.startswith(f"config key tasks.{name}.") for p in problems
        ):
            try:
                check_task_spec(name, config["tasks"][name])
            except TaskError as error:
                problems.append(str(error))
    retrieval_encoder = config["protocol"]["retrieval_encoder"]
    if retrieval_encoder not in config["encoders"]:
        problems.append(
            f"protocol.retrieval_encoder: {retrieval_encoder!r} is not in the encoders catalog "
            f"(known: {', '.join(sorted(config['encoders']))})"
        )
    if problems:
        raise WorkflowError("invalid configuration:\n  " + "\n  ".join(problems))


_check_selection()


def _alternatives(names):
    return "|".join(re.escape(name) for name in names) or "(?!)"


# theory_icl (rules/theory_icl.smk): the trained model and the world's task run through the chain as one pair,
# besides the run.models x run.tasks grid
THEORY_ICL = config["theory_icl"]
THEORY_ICL_PAIR = (
    [THEORY_ICL["chain"]["model"], THEORY_ICL["chain"]["task"]]
    if THEORY_ICL["enabled"]
    else []
)
from kicl.theory.icl_world import config_problems as _theory_icl_problems

if THEORY_ICL["enabled"] and _theory_icl_problems(THEORY_ICL):
    raise WorkflowError(
        "invalid configuration:\n  " + "\n  ".join(_theory_icl_problems(THEORY_ICL))
    )
for _kind, _name in zip(("models", "tasks"), THEORY_ICL_PAIR):
    if _name not in config[_kind]:
        raise WorkflowError(
            f"invalid configuration:\n  theory_icl.chain.{_kind[:-1]}: {_name!r} is not in the {_kind} catalog "
            f"(known: {', '.join(sorted(config[_kind]))})"
        )


wildcard_constraints:
    task=_alternatives(list(dict.fromkeys(SELECTED_TASKS + THEORY_ICL_PAIR[1:]))),
    model=_alternatives(list(dict.fromkeys(SELECTED_MODELS + THEORY_ICL_PAIR[:1]))),
    encoder=_alternatives(ENCODERS_IN_USE),
    split=r"[A-Za-z0-9_]+",


def task_spec(wildcards):
    """The config spec of the task in the wildcards."""
    return config["tasks"][wildcards.task]


def model_spec(wildcards):
    """The config spec of the model in the wildcards."""
    return config["models"][wildcards.model]


def encoder_spec(wildcards):
    """The config spec of the encoder in the wildcards."""
    return config["encoders"][wildcards.encoder]


def task_split_input(wildcards):
    """Input of prepare_task: the extracted wheel member or the local split file."""
    spec = config["tasks"][wildcards.task]
    if spec["source"] == "packaged":
        return {"package": f"resources/tasks/{wildcards.task}/package"}
    if spec["source"] == "local":
        return {"file": str(local_split_file(wildcards.task, spec, wildcards.split))}
    return {}


def packaged_member_path(wildcards, input):
    """The extracted member file of a packaged task (None for other sources)."""
    spec = config["tasks"][wildcards.task]
    if spec["source"] != "packaged":
        return None
    return str(Path(input.package, *spec["packaged"]["member"].split("/")))


def model_manifest_input(wildcards):
    """The converted folder of a packaged_gguf model; nothing for hub and local models."""
    if config["models"][wildcards.model]["source"] == "packaged_gguf":
        return {"folder": f"resources/models/{wildcards.model}"}
    if THEORY_ICL_PAIR and wildcards.model == THEORY_ICL_PAIR[0]:
        return {
            "folder": config["models"][wildcards.model]["local"]["path"]
        }  # trained by theory_icl_pretrain
    return {}


def encoder_manifest_input(wildcards):
    """The extracted folder of a packaged encoder; nothing for hub and local encoders."""
    if config["encoders"][wildcards.encoder]["source"] == "packaged":
        return {"folder": f"resources/encoders/{wildcards.encoder}"}
    return {}


def prompt_inputs(wildcards):
    """The task's evaluation and demonstration splits and the model manifest; with a retrieval
    demo_strategy (nearest/farthest) also the manifest of protocol.retrieval_encoder."""
    spec = config["tasks"][wildcards.task]
    inputs = {
        "eval": f"resources/tasks/{wildcards.task}/{spec['eval_split']}.parquet",
        "demo": f"resources/tasks/{wildcards.task}/{spec['demo_split']}.parquet",
        "model": f"resources/models/{wildcards.model}.json",
    }
    if RETRIEVAL_ENCODER:
        inputs["encoder"] = f"resources/encoders/{RETRIEVAL_ENCODER}.json"
    return inputs


def prompt_outputs():
    return expand(
        "results/prompts/{model}/{task}/{file}",
        model=SELECTED_MODELS,
        task=SELECTED_TASKS,
        file=["meta.json", "prompts.jsonl"],
    )


# ---- Forward pass (rules/forward.smk)


def forward_record(wildcards):
    """The resolved config behind one forward store (kept in its attrs)."""
    return {
        "capture": config["capture"],
        "protocol": config["protocol"],
        "tasks": {wildcards.task: config["tasks"][wildcards.task]},
        "models": {wildcards.model: config["models"][wildcards.model]},
    }


def _forward_device(wildcards):
    """capture.device, else the model's catalog device, else cpu (kicl.config.resolve_device)."""
    return resolve_device(
        config["capture"]["device"], config["models"][wildcards.model].get("device")
    )


def forward_gpus(wildcards):
    """One GPU when the capture runs on CUDA (a Slurm job then asks for it), none on CPU."""
    return 1 if _forward_device(wildcards).startswith("cuda") else 0


# forward_mem_mb and forward_runtime: see "Cluster resources of the forward pass" at the end of this file.


# ---- Causal head ablation (rules/causal.smk), for causal.tasks (a subset of run.tasks)
CAUSAL_TASKS = [task for task in config["causal"]["tasks"] if task in SELECTED_TASKS]
_causal_unknown = [
    task for task in config["causal"]["tasks"] if task not in config["tasks"]
]
if _causal_unknown:
    raise WorkflowError(
        f"invalid configuration:\n  causal.tasks: {_causal_unknown} are not in the tasks catalog "
        f"(known: {', '.join(sorted(config['tasks']))})"
    )


def causal_outputs():
    """The ablation curves (figure + CSV) of every selected model on the causal tasks that are run."""
    return expand(
        "results/figures/{model}/{task}/fig_causal_ablation.{ext}",
        model=SELECTED_MODELS,
        task=CAUSAL_TASKS,
        ext=["png", "csv"],
    )


# ---- Figures and tables (rules/figures.smk, rules/tables.smk); options from config `analysis:` only


#: (what, rule) of every figure and table in the report, in reading order; the summary page lists them
REPORT_ITEMS = [
    ("Table 3 (theory)", "theory_table3_tables"),
    ("Table 3 figure (theory)", "theory_table3_figure"),
    ("Fig 2: averaged attention map", "fig2_attention_map"),
    ("Fig 25: one prompt's attention map", "fig25_single_prompt_map"),
    ("Fig 3a/3b: reconstruction accuracy per head", "fig3_reconstruction"),
    ("Fig 4: kernel weight vs sim_pred correlation", "fig4_simpred_correlation"),
    ("Fig 5a/5b: key and value probes", "fig5_kv_probes"),
    ("Table 2: kernel regression vs ICL", "table2"),
    ("Verdict: selected head vs attention-free baselines", "verdict"),
    ("Causal test: ablating the kernel heads", "fig_causal_ablation"),
    ("Table 2 encoder rows alone", "table_encoder_kr"),
]
FIGURE_RULES = [
    "fig2_attention_map",
    "fig25_single_prompt_map",
    "fig3_reconstruction",
    "fig4_simpred_correlation",
]
if config["capture"].get("kv_prompts", 0) > 0:
    FIGURE_RULES.append("fig5_kv_probes")
TABLE_RULES = ["table2", "verdict"] + (
    ["table_encoder_kr"] if SELECTED_ENCODERS else []
)


def _rule_outputs(name):
    """Every output of a rule, expanded over the selected models, tasks and encoders."""
    patterns = [str(path) for path in getattr(rules, name).output]
    files = expand(
        patterns,
        model=SELECTED_MODELS,
        task=SELECTED_TASKS,
        encoder=SELECTED_ENCODERS,
        allow_missing=True,
    )
    return list(dict.fromkeys(files))


def figure_outputs():
    return [path for name in FIGURE_RULES for path in _rule_outputs(name)]


def table_outputs():
    return [path for name in TABLE_RULES for path in _rule_outputs(name)]


def single_prompt_rescale_len(wildcards):
    """Fig 25: None (one column per token) unless analysis.single_prompt_rescale asks for Fig 2's layout."""
    analysis = config["analysis"]
    return analysis["rescale_len"] if analysis["single_prompt_rescale"] else None


def encoder_task_pairs():
    """[encoder, task] for every selected pair, in the order of encoder_kr_csvs()."""
    return [[encoder, task] for encoder in SELECTED_ENCODERS for task in SELECTED_TASKS]


def encoder_kr_csvs(wildcards):
    return [
        f"results/encoder_kr/{encoder}/{wildcards.model}/{task}.csv"
        for encoder, task in encoder_task_pairs()
    ]


def table2_inputs(wildcards):
    """Every selected task's forward store for the model, and its encoder-KR predictions."""
    return {
        "stores": expand(
            "results/forward/{model}/{task}.zarr",
            model=wildcards.model,
            task=SELECTED_TASKS,
        ),
        "kr": encoder_kr_csvs(wildcards),
    }


def summary_inputs():
    return theory_outputs() + figure_outputs() + table_outputs() + causal_outputs()


def summary_entries(wildcards):
    """What the summary page lists: each report item, the rule that made it and its files."""
    made = set(
        FIGURE_RULES + TABLE_RULES + ["theory_table3_tables", "theory_table3_figure"]
    )
    if CAUSAL_TASKS:
        made.add("fig_causal_ablation")
    entries = []
    for what, name in REPORT_ITEMS:
        if name not in made or not hasattr(rules, name):
            continue
        proxy = getattr(rules, name)
        benchmark = str(proxy.benchmark) if proxy.rule.benchmark else None
        entries.append(
            {
                "what": what,
                "rule": name,
                "files": (
                    causal_outputs()
                    if name == "fig_causal_ablation"
                    else _rule_outputs(name)
                ),
                "benchmark": benchmark,
                "benchmarks": _benchmark_files(
                    benchmark,
                    CAUSAL_TASKS if name == "fig_causal_ablation" else SELECTED_TASKS,
                ),
            }
        )
    return entries


def _benchmark_files(pattern, tasks=None):
    if not pattern:
        return []
    files = expand(
        pattern,
        model=SELECTED_MODELS,
        task=SELECTED_TASKS if tasks is None else tasks,
        encoder=SELECTED_ENCODERS,
    )
    return list(dict.fromkeys(files))


def theory_icl_outputs():
    """The trained-transformer stage and, on its model and task, the chain's prompts and figures (Figs 2-5)."""
    if not THEORY_ICL_PAIR:
        return []
    model, task = THEORY_ICL_PAIR
    own = [
        "results/theory_icl/training_loss.png",
        "results/theory_icl/training_loss_figure.csv",
        "results/theory_icl/comparison.csv",
        "results/theory_icl/comparison.md",
        "results/theory_icl/comparison.png",
        "results/theory_icl/comparison_figure.csv",
    ]
    chain = [
        path
        for name in FIGURE_RULES
        for path in expand(
            [str(p) for p in getattr(rules, name).output],
            model=model,
            task=task,
            encoder=SELECTED_ENCODERS,
            allow_missing=True,
        )
    ]
    return own + list(dict.fromkeys(chain))


def final_outputs():
    return (
        theory_outputs()
        + theory_icl_outputs()
        + prompt_outputs()
        + figure_outputs()
        + table_outputs()
        + causal_outputs()
        + ["results/summary/index.html"]
    )


# ---- Cluster resources of the forward pass (profiles/slurm). Called by Snakemake when it schedules a
# forward_pass job, i.e. after its inputs exist (a dry run shows <TBD>); estimates in kicl/workflow/resources.py.
def _forward_workload(wildcards, input):
    """(ModelSize, PromptWorkload, dtype, device) of a forward_pass job, from its input files."""
    import json

    from kicl.workflow.resources import model_size, prompt_workload

    manifest_path = f"resources/models/{wildcards.model}.json"
    prompts_path = f"results/prompts/{wildcards.model}/{wildcards.task}/prompts.jsonl"
    for path in (manifest_path, prompts_path):
        if path not in input:
            raise WorkflowError(
                f"forward_mem_mb/forward_runtime need {path} among the rule's input"
            )
    # a missing input raises FileNotFoundError naming it: Snakemake then shows <TBD> (dry run)
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    dtype = resolve_dtype(config["capture"]["dtype"], manifest.get("dtype"))
    # as forward_gpus; a device still "auto" counts as the slower CPU for the time limit
    device = _forward_device(wildcards)
    return model_size(manifest["path"]), prompt_workload(prompts_path), dtype, device


def forward_mem_mb(wildcards, input, attempt):
    """Slurm --mem of a forward_pass job: weights, one shard, CPU activations; doubled on a retry."""
    from kicl.workflow.resources import forward_memory_mb

    model, work, dtype, device = _forward_workload(wildcards, input)
    return forward_memory_mb(
        model,
        work,
        dtype=dtype,
        device=device,
        batch_size=config["capture"]["batch_size"],
        shard_size=config["capture"]["shard_size"],
        attempt=attempt,
    )


def forward_runtime(wildcards, input, threads, attempt):
    """Slurm -t (minutes) of a forward_pass job: 2 x parameters x tokens at a cautious rate; doubled on a retry."""
    from kicl.workflow.resources import forward_runtime_minutes

    model, work, dtype, device = _forward_workload(wildcards, input)
    return forward_runtime_minutes(
        model, work, dtype=dtype, device=device, threads=threads, attempt=attempt
    )
