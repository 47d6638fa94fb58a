# Config loading and validation, wildcard constraints and target helpers. No rules here.
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from kicl.config import resolve_device, resolve_dtype
from kicl.workflow.checks import (
    encoders_in_use,
    resolved_protocols,
    retrieval_encoder,
    workflow_errors,
)

# Every problem of the config, one line each naming the key, before any job runs
# ("config key theory.n_hmms: -1 is less than the minimum of 1"); kicl.workflow.checks;
# snakemake's validate then fills in the schema defaults.
_config_problems = workflow_errors(
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
from kicl.data.tasks import local_split_file

SELECTED_TASKS = list(config["run"]["tasks"])
SELECTED_MODELS = list(config["run"]["models"])
SELECTED_ENCODERS = list(config["run"]["encoders"])

# ---- Experimental conditions (config conditions:, run.conditions, ablation:): each a set of protocol overrides
from kicl.conditions import condition_tasks, decision_partner, selected_conditions
from kicl.prompts.ood import rewrites_path
from kicl.prompts.retrieval import needs_model_kernel

SELECTED_CONDITIONS = selected_conditions(
    config
)  # run.conditions + the decision rule's label-flip partner
REFERENCE = config["ablation"]["reference"]
PARTNER = decision_partner(config)
CONDITION_TASKS = condition_tasks(config)
#: condition -> its effective protocol (kicl.prompts.options.Protocol), resolved once (checked above)
PROTOCOLS = resolved_protocols(config)[0]


def task_conditions():
    """(task, condition) of every prompt set the run builds, reference first."""
    return [
        (task, condition)
        for condition in SELECTED_CONDITIONS
        for task in CONDITION_TASKS[condition]
    ]


def condition_protocol_of(wildcards):
    """The effective protocol of the condition in the wildcards, as a dict (its params make only its jobs rerun)."""
    return PROTOCOLS[wildcards.condition].as_dict()


def prompt_encoder_cache(wildcards):
    """The shared embedding folder of the encoder that ranks the condition's demonstrations (None if none)."""
    encoder = retrieval_encoder(PROTOCOLS[wildcards.condition])
    return f"results/embeddings/{encoder}" if encoder else None


def capture_threads(default):
    """Cores of a job whose torch computes stored numbers: capture.intra_op_threads (0: `default`)."""
    return config["capture"].get("intra_op_threads", 1) or default


def prompt_threads(wildcards):
    """The capture's threads when the prompts need the model's own kernel (forward passes), else one."""
    return (
        capture_threads(2) if needs_model_kernel(PROTOCOLS[wildcards.condition]) else 1
    )


def model_kernel_capture(wildcards):
    """The capture: section when the condition's prompts need the model's P(o|x) kernel; else None."""
    protocol = PROTOCOLS[wildcards.condition]
    return config["capture"] if needs_model_kernel(protocol) else None


def other_task_spec(wildcards):
    """The catalog entry of protocol.other_task for a condition with inputs: other_task; else None."""
    protocol = PROTOCOLS[wildcards.condition]
    if protocol.inputs != "other_task":
        return None
    return config["tasks"][protocol.other_task]


ENCODERS_IN_USE = encoders_in_use(config, PROTOCOLS)


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


wildcard_constraints:
    task=_alternatives(list(dict.fromkeys(SELECTED_TASKS + THEORY_ICL_PAIR[1:]))),
    model=_alternatives(list(dict.fromkeys(SELECTED_MODELS + THEORY_ICL_PAIR[:1]))),
    encoder=_alternatives(ENCODERS_IN_USE),
    condition=_alternatives(SELECTED_CONDITIONS),
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
    """The task's evaluation and demonstration splits and the model manifest; when the condition's
    demo_strategy ranks by a sentence encoder, also that encoder's manifest."""
    spec = config["tasks"][wildcards.task]
    inputs = {
        "eval": f"resources/tasks/{wildcards.task}/{spec['eval_split']}.parquet",
        "demo": f"resources/tasks/{wildcards.task}/{spec['demo_split']}.parquet",
        "model": f"resources/models/{wildcards.model}.json",
    }
    protocol = PROTOCOLS[wildcards.condition]
    encoder = retrieval_encoder(protocol)
    if encoder:
        inputs["encoder"] = f"resources/encoders/{encoder}.json"
    if protocol.inputs == "other_task":
        other = config["tasks"][protocol.other_task]
        inputs["other_demo"] = (
            f"resources/tasks/{protocol.other_task}/{other['demo_split']}.parquet"
        )
    if protocol.test_inputs == "rewrites":
        inputs["rewrites"] = str(rewrites_path(protocol, wildcards.task))
    if needs_model_kernel(protocol) and needs_dtype_check(wildcards.model):
        # the model's own kernel in the dtype its forward passes use, so their P(o|x) cache entries are shared
        inputs["dtype"] = f"results/dtype_check/{wildcards.model}.json"
    return inputs


def expand_conditions(patterns, **wildcards):
    """``patterns`` expanded over every selected (task, condition) and over the other ``wildcards`` (lists)."""
    files = [
        path
        for task, condition in task_conditions()
        for path in expand(
            patterns, task=task, condition=condition, allow_missing=True, **wildcards
        )
    ]
    return list(dict.fromkeys(files))


def prompt_outputs():
    return expand_conditions(
        "results/prompts/{model}/{task}/{condition}/{file}",
        model=SELECTED_MODELS,
        file=["meta.json", "prompts.jsonl"],
    )


# ---- Forward pass (rules/forward.smk)


def forward_record(wildcards):
    """The resolved config behind one forward store (kept in its attrs)."""
    return {
        "capture": config["capture"],
        "condition": wildcards.condition,
        "protocol": PROTOCOLS[wildcards.condition].as_dict(),
        "tasks": {wildcards.task: config["tasks"][wildcards.task]},
        "models": {wildcards.model: config["models"][wildcards.model]},
    }


def needs_dtype_check(model):
    """Whether capture.dtype auto may pick bfloat16 for this model's CPU forward passes (the dtype_check job
    settles it): auto, on the CPU, a float32 (or unnamed) catalog dtype."""
    spec = config["models"][model]
    return (
        config["capture"]["dtype"] == "auto"
        and resolve_device(config["capture"]["device"], spec.get("device")) == "cpu"
        and resolve_dtype("auto", spec.get("dtype")) == "float32"
    )


def dtype_check_tasks(wildcards):
    """The tasks whose reference prompts the model's dtype check runs: the world's task for the theory_icl
    model, else every selected task."""
    if THEORY_ICL_PAIR and wildcards.model == THEORY_ICL_PAIR[0]:
        return THEORY_ICL_PAIR[1:]
    return SELECTED_TASKS


def dtype_check_inputs(wildcards):
    prompts = [
        f"results/prompts/{wildcards.model}/{task}/{REFERENCE}"
        for task in dtype_check_tasks(wildcards)
    ]
    return {
        "model": f"resources/models/{wildcards.model}.json",
        "metas": [f"{folder}/meta.json" for folder in prompts],
        "prompts": [f"{folder}/prompts.jsonl" for folder in prompts],
    }


def forward_inputs(wildcards):
    """The prompt files and the model manifest; the model's dtype decision where capture.dtype auto needs one."""
    folder = f"results/prompts/{wildcards.model}/{wildcards.task}/{wildcards.condition}"
    inputs = {
        "meta": f"{folder}/meta.json",
        "prompts": f"{folder}/prompts.jsonl",
        "model": f"resources/models/{wildcards.model}.json",
    }
    if needs_dtype_check(wildcards.model):
        inputs["dtype"] = f"results/dtype_check/{wildcards.model}.json"
    return inputs


def _forward_device(wildcards):
    """capture.device, else the model's catalog device, else cpu (kicl.config.resolve_device)."""
    return resolve_device(
        config["capture"]["device"], config["models"][wildcards.model].get("device")
    )


def forward_gpus(wildcards):
    """One GPU when the capture runs on CUDA (a Slurm job then asks for it), none on CPU."""
    return 1 if _forward_device(wildcards).startswith("cuda") else 0


# forward_mem_mb and forward_runtime: see "Cluster resources of the forward pass" at the end of this file.


# ---- Causal head ablation (rules/causal.smk), for causal.tasks (a subset of run.tasks), on the reference condition
CAUSAL_TASKS = [task for task in config["causal"]["tasks"] if task in SELECTED_TASKS]


def causal_outputs():
    """The ablation curves (figure + CSV) of every selected model on the causal tasks, reference condition."""
    return expand(
        "results/figures/{model}/{task}/{condition}/fig_causal_ablation.{ext}",
        model=SELECTED_MODELS,
        task=CAUSAL_TASKS,
        condition=REFERENCE,
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
    ("Conditions side by side (ablations)", "ablation_table"),
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
#: the figure and table rules that `all` runs for the non-reference conditions too
CONDITION_OUTPUTS = list(config["ablation"]["outputs"])


def _rule_outputs(name):
    """Every output of a rule, expanded over the selected models, encoders and (task, condition) pairs; for a
    non-reference condition only if ablation.outputs names the rule."""
    patterns = [str(path) for path in getattr(rules, name).output]
    pairs = [
        (task, condition)
        for task, condition in task_conditions()
        if condition == REFERENCE or name in CONDITION_OUTPUTS
    ]
    files = [
        path
        for task, condition in pairs
        for path in expand(
            patterns,
            model=SELECTED_MODELS,
            task=task,
            condition=condition,
            encoder=SELECTED_ENCODERS,
            allow_missing=True,
        )
    ]
    return list(dict.fromkeys(files))


def figure_outputs():
    return [path for name in FIGURE_RULES for path in _rule_outputs(name)]


def table_outputs():
    return [path for name in TABLE_RULES for path in _rule_outputs(name)]


def single_prompt_rescale_len(wildcards):
    """Fig 25: None (one column per token) unless analysis.single_prompt_rescale asks for Fig 2's layout."""
    analysis = config["analysis"]
    return analysis["rescale_len"] if analysis["single_prompt_rescale"] else None


def condition_task_list(wildcards):
    """The tasks behind a (model, condition) table: the condition's tasks; the world's task for the
    theory_icl model."""
    if THEORY_ICL_PAIR and wildcards.model == THEORY_ICL_PAIR[0]:
        return THEORY_ICL_PAIR[1:]
    return CONDITION_TASKS[wildcards.condition]


def encoder_task_pairs(wildcards):
    """[encoder, task] for every selected encoder and every task of the table, in encoder_kr_csvs order."""
    return [
        [encoder, task]
        for encoder in SELECTED_ENCODERS
        for task in condition_task_list(wildcards)
    ]


def encoder_kr_csvs(wildcards):
    return [
        f"results/encoder_kr/{encoder}/{wildcards.model}/{task}/{wildcards.condition}.csv"
        for encoder, task in encoder_task_pairs(wildcards)
    ]


def verdict_inputs(wildcards):
    """Named stores of the condition's tasks (store_<task>) and, for the reference, of its label-flip partner
    (partner_<task>)."""
    path = "results/forward/{model}/{task}/{condition}.zarr"
    inputs = {}
    for task in condition_task_list(wildcards):
        inputs[f"store_{task}"] = path.format(
            model=wildcards.model, task=task, condition=wildcards.condition
        )
        if PARTNER and wildcards.condition == REFERENCE:
            inputs[f"partner_{task}"] = path.format(
                model=wildcards.model, task=task, condition=PARTNER
            )
    if needs_dtype_check(
        wildcards.model
    ):  # its float32-vs-bfloat16 numbers: the noise floor
        inputs["dtype_check"] = f"results/dtype_check/{wildcards.model}.json"
    return inputs


def table2_inputs(wildcards):
    """Every forward store of the condition's tasks for the model, and their encoder-KR predictions."""
    return {
        "stores": [
            f"results/forward/{wildcards.model}/{task}/{wildcards.condition}.zarr"
            for task in condition_task_list(wildcards)
        ],
        "kr": encoder_kr_csvs(wildcards),
    }


# ---- Ablation stage (rules/ablation.smk): the conditions of a (model, task) side by side
ABLATION_CONDITIONS = [
    condition
    for condition in SELECTED_CONDITIONS
    if condition == REFERENCE or CONDITION_TASKS[condition]
]
ABLATION_TASKS = (
    [task for task in config["ablation"]["tasks"] if task in SELECTED_TASKS]
    if len(ABLATION_CONDITIONS) > 1
    else []
)


#: the files of the ablation stage (kicl.figures.conditions.OUTPUT_FILES; tests/test_workflow_conditions.py checks it)
ABLATION_FILES = [
    "conditions.csv",
    "conditions.md",
    "conditions.tex",
    "order_groups.csv",
    "table1.csv",
    "table1.md",
    "table1.tex",
    "conditions.png",
    "conditions_figure.csv",
    "heads.png",
    "heads.csv",
]


def ablation_head_maps(wildcards):
    """The conditions of ablation.head_maps that run, in that order ([] = every condition)."""
    chosen = [c for c in config["ablation"]["head_maps"] if c in ABLATION_CONDITIONS]
    return chosen if len(chosen) > 1 else []


def ablation_inputs(wildcards):
    """Per condition of the ablation: its forward store, prompt file and encoder-KR predictions."""
    inputs = {}
    for condition in ABLATION_CONDITIONS:
        inputs[f"store_{condition}"] = (
            f"results/forward/{wildcards.model}/{wildcards.task}/{condition}.zarr"
        )
        inputs[f"prompts_{condition}"] = (
            f"results/prompts/{wildcards.model}/{wildcards.task}/{condition}/prompts.jsonl"
        )
        for encoder in SELECTED_ENCODERS[:1]:
            inputs[f"kr_{condition}"] = (
                f"results/encoder_kr/{encoder}/{wildcards.model}/{wildcards.task}/{condition}.csv"
            )
            inputs[f"emb_{condition}"] = (
                f"results/encoders/{encoder}/{wildcards.model}/{wildcards.task}/{condition}.npz"
            )
    return inputs


def ablation_outputs():
    """The ablation stage's table and figure (with their CSVs) per model and ablation task (rules/ablation.smk)."""
    return expand(
        "results/ablation/{model}/{task}/{name}",
        model=SELECTED_MODELS,
        task=ABLATION_TASKS,
        name=ABLATION_FILES,
    )


def summary_inputs():
    return (
        theory_outputs()
        + figure_outputs()
        + table_outputs()
        + [path for name in FIGURE_RULES + TABLE_RULES for path in pair_outputs(name)]
        + causal_outputs()
        + ablation_outputs()
    )


def summary_entries(wildcards):
    """What the summary page lists: each report item, the rule that made it and its files."""
    made = set(
        FIGURE_RULES + TABLE_RULES + ["theory_table3_tables", "theory_table3_figure"]
    )
    if CAUSAL_TASKS:
        made.add("fig_causal_ablation")
    if ABLATION_TASKS:
        made.add("ablation_table")
    special = {
        "fig_causal_ablation": (causal_outputs, CAUSAL_TASKS),
        "ablation_table": (ablation_outputs, ABLATION_TASKS),
    }
    entries = []
    for what, name in REPORT_ITEMS:
        if name not in made or not hasattr(rules, name):
            continue
        proxy = getattr(rules, name)
        benchmark = str(proxy.benchmark) if proxy.rule.benchmark else None
        outputs, tasks = special.get(name, (lambda: _entry_files(name), None))
        entries.append(
            {
                "what": what,
                "rule": name,
                "files": outputs(),
                "benchmark": benchmark,
                "benchmarks": _benchmark_files(benchmark, tasks),
            }
        )
    return entries


def _entry_files(name):
    """A figure or table rule's files on the summary page: the run's grid and the theory_icl pair."""
    pair = pair_outputs(name) if name in FIGURE_RULES + TABLE_RULES else []
    return list(dict.fromkeys(_rule_outputs(name) + pair))


def _benchmark_files(pattern, tasks=None):
    """The benchmark files of a rule's jobs in this run (per task and condition where the pattern has them)."""
    if not pattern:
        return []
    pairs = [
        (task, condition)
        for task, condition in task_conditions()
        if tasks is None or (task in tasks and condition == REFERENCE)
    ]
    files = [
        path
        for task, condition in pairs
        for path in expand(
            pattern,
            model=SELECTED_MODELS,
            task=task,
            condition=condition,
            encoder=SELECTED_ENCODERS,
        )
    ]
    return list(dict.fromkeys(files))


def theory_icl_outputs():
    """The trained-transformer stage and, on its model and task, the chain's prompts and figures (Figs 2-5)
    and its Table 2 and verdict, in the reference condition."""
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
    chain = [path for name in FIGURE_RULES + TABLE_RULES for path in pair_outputs(name)]
    return own + list(dict.fromkeys(chain))


def pair_outputs(name):
    """The outputs of a figure or table rule on the theory_icl model and task (reference condition)."""
    if not THEORY_ICL_PAIR:
        return []
    model, task = THEORY_ICL_PAIR
    files = expand(
        [str(p) for p in getattr(rules, name).output],
        model=model,
        task=task,
        condition=REFERENCE,
        encoder=SELECTED_ENCODERS,
        allow_missing=True,
    )
    return list(dict.fromkeys(files))


def final_outputs():
    return (
        theory_outputs()
        + theory_icl_outputs()
        + prompt_outputs()
        + figure_outputs()
        + table_outputs()
        + causal_outputs()
        + ablation_outputs()
        + ["results/summary/index.html"]
    )


# ---- Cluster resources of the forward pass (profiles/slurm). Called by Snakemake when it schedules a
# forward_pass job, i.e. after its inputs exist (a dry run shows <TBD>); estimates in kicl/workflow/resources.py.
def _forward_workload(wildcards, input):
    """(ModelSize, PromptWorkload, dtype, device) of a forward_pass job, from its input files."""
    import json

    from kicl.workflow.resources import model_size, prompt_workload

    manifest_path = f"resources/models/{wildcards.model}.json"
    prompts_path = f"results/prompts/{wildcards.model}/{wildcards.task}/{wildcards.condition}/prompts.jsonl"
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
    # torch's threads, whatever the job's cores
    compute_threads = capture_threads(threads)
    return forward_runtime_minutes(
        model,
        work,
        dtype=dtype,
        device=device,
        threads=compute_threads,
        attempt=attempt,
    )
