# Config loading and validation, wildcard constraints and target helpers. No rules here.
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from kicl.devices import resolve_device, resolve_dtype
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


# ---- Paths that several rules and input functions share (one spelling each)
PROMPT_DIR = "results/prompts/{model}/{task}/{condition}"
PROMPTS = "results/prompts/{model}/{task}/{condition}/prompts.jsonl"
PROMPT_META = "results/prompts/{model}/{task}/{condition}/meta.json"
TASK_SPLIT = "resources/tasks/{task}/{split}.parquet"
FORWARD_STORE = "results/forward/{model}/{task}/{condition}.zarr"
MODEL_MANIFEST = "resources/models/{model}.json"
ENCODER_MANIFEST = "resources/encoders/{encoder}.json"
DTYPE_CHECK = "results/dtype_check/{model}.json"
ENCODER_KR = "results/encoder_kr/{encoder}/{model}/{task}/{condition}.csv"
EMBEDDINGS = "results/encoders/{encoder}/{model}/{task}/{condition}.npz"
FIGURE_DIR = "results/figures/{model}/{task}/{condition}"
TABLE_DIR = "results/tables/{model}/{condition}"


def cell_report(path, caption, labels, category="{task}", subcategory=None):
    """A report() entry of a per-cell output: the task as category, 'model / condition' as subcategory."""
    return report(
        path,
        caption=f"../report/{caption}",
        category=category,
        subcategory=subcategory or "{model} / {condition}",
        labels=labels,
    )


# ---- Tasks, models, encoders and prompts (rules/data.smk, rules/models.smk, rules/prompts.smk)
from kicl.data.tasks import local_split_file

SELECTED_TASKS = list(config["run"]["tasks"])
SELECTED_MODELS = list(config["run"]["models"])
SELECTED_ENCODERS = list(config["run"]["encoders"])

# ---- Experimental conditions (config conditions:, run.conditions, conditions_stage:): each a set of protocol overrides
from kicl.workflow.grid import RunGrid, expand_cells
from kicl.prompts.ood import rewrites_path
from kicl.prompts.retrieval import needs_model_kernel

#: every (model, task, condition) cell of the run, the theory_icl chain's one included (kicl.workflow.grid)
RUN = RunGrid.from_config(config)
REFERENCE = RUN.reference
#: condition -> its effective protocol (kicl.prompts.options.Protocol), resolved once (checked above)
PROTOCOLS = resolved_protocols(config)[0]


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


wildcard_constraints:
    task=_alternatives(RUN.names(1)),
    model=_alternatives(RUN.names(0)),
    encoder=_alternatives(ENCODERS_IN_USE),
    condition=_alternatives(RUN.conditions),
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
    if any(wildcards.model == cell[0] for cell in RUN.pair):
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
        "eval": TASK_SPLIT.format(task=wildcards.task, split=spec["eval_split"]),
        "demo": TASK_SPLIT.format(task=wildcards.task, split=spec["demo_split"]),
        "model": MODEL_MANIFEST.format(model=wildcards.model),
    }
    protocol = PROTOCOLS[wildcards.condition]
    encoder = retrieval_encoder(protocol)
    if encoder:
        inputs["encoder"] = ENCODER_MANIFEST.format(encoder=encoder)
    if protocol.inputs == "other_task":
        other = config["tasks"][protocol.other_task]
        inputs["other_demo"] = TASK_SPLIT.format(
            task=protocol.other_task, split=other["demo_split"]
        )
    if protocol.test_inputs == "rewrites":
        inputs["rewrites"] = str(rewrites_path(protocol, wildcards.task))
    if needs_model_kernel(protocol) and needs_dtype_check(wildcards.model):
        # the model's own kernel in the dtype its forward passes use, so their P(o|x) cache entries are shared
        inputs["dtype"] = DTYPE_CHECK.format(model=wildcards.model)
    return inputs


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
    """The tasks whose reference prompts the model's dtype check runs (the world's task for theory_icl's)."""
    return RUN.tasks(wildcards.model, REFERENCE)


def dtype_check_inputs(wildcards):
    """The model manifest and the reference prompts of the tasks its dtype check runs."""
    cells = [
        dict(model=wildcards.model, task=task, condition=REFERENCE)
        for task in dtype_check_tasks(wildcards)
    ]
    return {
        "model": MODEL_MANIFEST.format(model=wildcards.model),
        "metas": [PROMPT_META.format(**cell) for cell in cells],
        "prompts": [PROMPTS.format(**cell) for cell in cells],
    }


def forward_inputs(wildcards):
    """The prompt files and the model manifest; the model's dtype decision where capture.dtype auto needs one."""
    inputs = {
        "meta": PROMPT_META.format(**wildcards),
        "prompts": PROMPTS.format(**wildcards),
        "model": MODEL_MANIFEST.format(model=wildcards.model),
    }
    if needs_dtype_check(wildcards.model):
        inputs["dtype"] = DTYPE_CHECK.format(model=wildcards.model)
    return inputs


def _forward_device(wildcards):
    """capture.device, else the model's catalog device, else cpu (kicl.devices.resolve_device)."""
    return resolve_device(
        config["capture"]["device"], config["models"][wildcards.model].get("device")
    )


def forward_gpus(wildcards):
    """One GPU when the capture runs on CUDA (a Slurm job then asks for it), none on CPU."""
    return 1 if _forward_device(wildcards).startswith("cuda") else 0


# forward_mem_mb and forward_runtime: see "Cluster resources of the forward pass" at the end of this file.


# ---- Causal head ablation (rules/causal.smk), for causal.tasks (a subset of run.tasks), on the reference condition


def single_prompt_rescale_len(wildcards):
    """Fig 25: None (one column per token) unless analysis.single_prompt_rescale asks for Fig 2's layout."""
    analysis = config["analysis"]
    return analysis["rescale_len"] if analysis["single_prompt_rescale"] else None


# ---- Inputs of the per-(model, condition) tables (rules/tables.smk), named by task (and encoder)
def condition_task_list(wildcards):
    """The tasks behind a (model, condition) table."""
    return RUN.tasks(wildcards.model, wildcards.condition)


def encoder_kr_inputs(wildcards):
    """Encoder-KR predictions of the table's tasks, named kr_<encoder>_<task>."""
    return {
        f"kr_{encoder}_{task}": ENCODER_KR.format(
            encoder=encoder, task=task, **wildcards
        )
        for encoder in SELECTED_ENCODERS
        for task in condition_task_list(wildcards)
    }


def table2_inputs(wildcards):
    """Forward stores of the table's tasks (store_<task>) and their encoder-KR predictions."""
    stores = {
        f"store_{task}": FORWARD_STORE.format(task=task, **wildcards)
        for task in condition_task_list(wildcards)
    }
    return stores | encoder_kr_inputs(wildcards)


def verdict_inputs(wildcards):
    """Named stores of the condition's tasks (store_<task>) and, for the reference, of its label-flip partner
    (partner_<task>); the dtype check's float32-vs-bfloat16 numbers (the noise floor) where there is one.
    """
    inputs = {}
    for task in condition_task_list(wildcards):
        inputs[f"store_{task}"] = FORWARD_STORE.format(task=task, **wildcards)
        if RUN.partner and wildcards.condition == REFERENCE:
            inputs[f"partner_{task}"] = FORWARD_STORE.format(
                model=wildcards.model, task=task, condition=RUN.partner
            )
    if needs_dtype_check(wildcards.model):
        inputs["dtype_check"] = DTYPE_CHECK.format(model=wildcards.model)
    return inputs


# ---- Conditions stage (rules/conditions.smk): the conditions of a (model, task) side by side
CONDITIONS_DIR = "results/conditions/{model}/{task}"


def conditions_report(name, caption, labels):
    """A report() entry of the conditions stage: category Conditions, 'model / task' as subcategory."""
    return cell_report(
        f"{CONDITIONS_DIR}/{name}", caption, labels, "Conditions", "{model} / {task}"
    )


CONDITIONS_STAGE_CONDITIONS = list(RUN.stage_conditions)


def conditions_head_maps(wildcards):
    """The conditions of conditions_stage.head_maps that run, in that order ([] = every condition)."""
    chosen = [
        c
        for c in config["conditions_stage"]["head_maps"]
        if c in CONDITIONS_STAGE_CONDITIONS
    ]
    return chosen if len(chosen) > 1 else []


def conditions_inputs(wildcards):
    """Per condition of the conditions stage: its forward store, prompt file and encoder-KR predictions."""
    inputs = {}
    for condition in CONDITIONS_STAGE_CONDITIONS:
        cell = dict(model=wildcards.model, task=wildcards.task, condition=condition)
        inputs[f"store_{condition}"] = FORWARD_STORE.format(**cell)
        inputs[f"prompts_{condition}"] = PROMPTS.format(**cell)
        for encoder in SELECTED_ENCODERS[:1]:
            inputs[f"kr_{condition}"] = ENCODER_KR.format(encoder=encoder, **cell)
            inputs[f"emb_{condition}"] = EMBEDDINGS.format(encoder=encoder, **cell)
    return inputs


# ---- The run grid and its targets: which cells each rule runs on, computed once
#: figure and table rules that `all` runs for the non-reference conditions too
CONDITION_OUTPUTS = list(config["conditions_stage"]["outputs"])
FIGURE_RULES = [
    "fig2_attention_map",
    "fig25_single_prompt_map",
    "fig3_reconstruction",
    "fig4_simpred_correlation",
] + (["fig5_kv_probes"] if config["capture"].get("kv_prompts", 0) > 0 else [])
TABLE_RULES = ["table2", "verdict"] + (
    ["table_encoder_kr"] if SELECTED_ENCODERS else []
)
#: stages that run on chosen tasks of the reference condition only
STAGE_CELLS = {
    "fig_causal_ablation": [c for c in RUN.reference_cells if c[1] in RUN.causal_tasks],
    **{
        name: [c for c in RUN.reference_cells if c[1] in RUN.stage_tasks]
        for name in ("conditions_numbers", "conditions_tables", "conditions_figures")
    },
}
THEORY_ICL_RULES = (
    ["theory_icl_loss_figure", "theory_icl_compare", "theory_icl_figure"]
    if RUN.pair
    else []
)
#: every rule whose outputs `all` asks for (the summary page lists the report items among them)
RUN_RULES = (
    ["theory_table3", "theory_table3_tables", "theory_table3_figure"]
    + THEORY_ICL_RULES
    + FIGURE_RULES
    + TABLE_RULES
    + [name for name, cells in STAGE_CELLS.items() if cells]
)
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
    ("Conditions side by side", "conditions_numbers"),
    ("Causal test: ablating the kernel heads", "fig_causal_ablation"),
    ("Table 2 encoder rows alone", "table_encoder_kr"),
]


def rule_cells(name):
    """The cells that a rule runs on. A stage's own; else the grid's reference cells, its other conditions where
    conditions_stage.outputs names the rule, and the theory_icl cell for the figure and table rules.
    """
    if name in STAGE_CELLS:
        return STAGE_CELLS[name]
    grid = [c for c in RUN.cells if c[2] == REFERENCE or name in CONDITION_OUTPUTS]
    return grid + list(RUN.pair if name in FIGURE_RULES + TABLE_RULES else [])


def rule_outputs(name, cells=None):
    """Every output of ``name`` (a rule) over ``cells`` (default: the cells it runs on)."""
    patterns = [str(path) for path in getattr(rules, name).output]
    cells = rule_cells(name) if cells is None else cells
    return expand_cells(patterns, cells, SELECTED_ENCODERS)


def theory_icl_outputs():
    """The trained-transformer stage and, on its model and task, the chain's figures, Table 2 and verdict."""
    chain = [rule_outputs(name, RUN.pair) for name in FIGURE_RULES + TABLE_RULES]
    own = [rule_outputs(name) for name in THEORY_ICL_RULES]
    return list(dict.fromkeys(sum(own + chain, [])))


def summary_inputs():
    """Every figure and table of the run (the summary page waits for them all)."""
    return list(dict.fromkeys(sum([rule_outputs(name) for name in RUN_RULES], [])))


def summary_entries(wildcards):
    """What the summary page lists: each report item this run makes, its rule, files and benchmark files."""
    entries = []
    for what, name in REPORT_ITEMS:
        if name not in RUN_RULES:
            continue
        proxy = getattr(rules, name)
        benchmark = str(proxy.benchmark) if proxy.rule.benchmark else None
        entries.append(
            {
                "what": what,
                "rule": name,
                "files": rule_outputs(name),
                "benchmark": benchmark,
                "benchmarks": (
                    expand_cells(benchmark, rule_cells(name), SELECTED_ENCODERS)
                    if benchmark
                    else []
                ),
            }
        )
    return entries


def final_outputs():
    """`all`: every prompt set of the grid, every rule of RUN_RULES and the summary page."""
    prompts = expand_cells([PROMPT_META, PROMPTS], RUN.cells)
    return prompts + summary_inputs() + ["results/summary/index.html"]


# ---- Cluster resources of the forward pass (profiles/slurm). Called by Snakemake when it schedules a
# forward_pass job, i.e. after its inputs exist (a dry run shows <TBD>); estimates in kicl/workflow/resources.py.
def _forward_workload(wildcards, input):
    """(ModelSize, PromptWorkload, dtype, device) of a forward_pass job, from its input files."""
    import json

    from kicl.workflow.resources import model_size, prompt_workload

    manifest_path = MODEL_MANIFEST.format(model=wildcards.model)
    prompts_path = PROMPTS.format(**wildcards)
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
