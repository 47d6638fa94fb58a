"""Cluster resource estimates of the forward pass (kicl.workflow.resources)."""

import json

import pytest

from kicl.workflow.resources import (
    ModelSize,
    PromptWorkload,
    attention_store_mb,
    config_parameter_count,
    forward_memory_mb,
    forward_runtime_minutes,
    model_size,
    prompt_workload,
    safetensors_parameter_count,
)

# config.json fields of two real models and their published parameter counts
GPTJ_6B = {
    "model_type": "gptj",
    "n_embd": 4096,
    "n_layer": 28,
    "n_head": 16,
    "vocab_size": 50400,
    "n_inner": None,
    "tie_word_embeddings": False,
    "rotary_dim": 64,
}
GPTJ_6B_PARAMS = 6_053_381_344
SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
SMOLLM2_135M_PARAMS = 134_515_008

GPTJ = ModelSize(GPTJ_6B_PARAMS, n_layers=28, n_heads=16, hidden=4096, vocab=50400)
# the paper's protocol: 1000 prompts of ~600 tokens, ~5 unique inputs per prompt of ~30 tokens
PAPER_TASK = PromptWorkload(
    n_prompts=1000, prompt_tokens=600_000, max_length=700, n_contexts=5000, context_tokens=150_000
)


@pytest.mark.parametrize("config, published", [(GPTJ_6B, GPTJ_6B_PARAMS), (SMOLLM2_135M, SMOLLM2_135M_PARAMS)])
def test_config_parameter_count_matches_published_sizes(config, published):
    assert config_parameter_count(config) == pytest.approx(published, rel=0.005)


def test_safetensors_header_count_equals_the_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=101, n_positions=64))
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert safetensors_parameter_count(tmp_path) == sum(p.numel() for p in model.parameters())
    size = model_size(tmp_path)
    assert (size.n_layers, size.n_heads, size.hidden, size.vocab) == (2, 4, 32, 101)
    assert size.n_params == sum(p.numel() for p in model.parameters())


def test_model_size_falls_back_to_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M))
    assert safetensors_parameter_count(tmp_path) is None
    assert model_size(tmp_path).n_params == config_parameter_count(SMOLLM2_135M)


def _prompt(prompt_id, test_text, demo_texts, length):
    demos = [
        {
            "pool_index": i,
            "label": 0,
            "text": t,
            "block_span": [1 + 5 * i, 6 + 5 * i],
            "input_span": [2 + 5 * i, 4 + 5 * i],
            "label_pos": 4 + 5 * i,
            "delim_span": [5 + 5 * i, 6 + 5 * i],
        }
        for i, t in enumerate(demo_texts)
    ]
    return {
        "prompt_id": prompt_id,
        "split": "select",
        "test_index": prompt_id,
        "gold": 0,
        "input_ids": list(range(length)),
        "test_text": test_text,
        "test_span": [length - 4, length - 1],
        "demos": demos,
    }


def test_prompt_workload_counts_prompts_tokens_and_unique_inputs(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [_prompt(0, "t1", ["a", "b"], 20), _prompt(1, "t2", ["b", "c"], 30), _prompt(2, "t1", ["a", "c"], 25)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    work = prompt_workload(path)
    assert (work.n_prompts, work.prompt_tokens, work.max_length) == (3, 75, 30)
    assert work.n_contexts == 5  # t1, t2, a, b, c
    assert work.context_tokens == 2 * 3 + 3 * 2  # test spans of 3 tokens, demo input spans of 2
    rows[1]["demos"][0]["label_pos"] = 99  # a broken prompt file is named, not counted
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r"prompt 1: label_pos 99 is outside"):
        prompt_workload(path)


def test_gptj_on_a_gpu_fits_a_common_node_and_retries_ask_for_more():
    first = forward_memory_mb(GPTJ, PAPER_TASK, dtype="float16", device="cuda", batch_size=4, shard_size=16)
    # 12 GB of float16 weights must fit, and the request must stay far below a 256 GB node
    assert 12 * 1024 < first < 40 * 1024
    assert first % 256 == 0
    again = forward_memory_mb(GPTJ, PAPER_TASK, dtype="float16", device="cuda", attempt=2)
    assert again >= 2 * first - 256
    assert forward_memory_mb(GPTJ, PAPER_TASK, dtype="float32", device="cuda") > first


def test_runtime_grows_with_prompts_and_is_longer_on_cpu():
    gpu = forward_runtime_minutes(GPTJ, PAPER_TASK, dtype="float16", device="cuda")
    assert 15 <= gpu <= 6 * 60
    double = PromptWorkload(2000, 1_200_000, 700, 10_000, 300_000)
    assert forward_runtime_minutes(GPTJ, double, dtype="float16", device="cuda") > gpu
    assert forward_runtime_minutes(GPTJ, PAPER_TASK, dtype="float32", device="cpu", threads=4) > 10 * gpu
    assert forward_runtime_minutes(GPTJ, PAPER_TASK, dtype="float16", device="cuda", attempt=2) >= 2 * gpu - 1


def test_attention_store_size_is_prompt_layer_head_position_float32():
    assert attention_store_mb(GPTJ, PAPER_TASK) == pytest.approx(1000 * 28 * 16 * 700 * 4 / 2**20)
