"""CaptureSession clean-up and the intervention handlers against eager references on tiny random models."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import make_model_folder, make_prompts, make_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.capture.adapters import attention_modules, model_shape  # noqa: E402
from kicl.capture.handlers import AttentionKnockout, HeadAblation, HeadOutputs, Recorder  # noqa: E402
from kicl.capture.session import CAPTURE_ATTENTION, CaptureSession  # noqa: E402

FAMILIES = ["llama", "gptj", "gpt2"]
TOL = 1e-4


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(tokenizer_dir)
    _, path = make_prompts(tmp_path_factory.mktemp("prompts"), tokenizer_dir, n_prompts=5, demos=(2, 4))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["input_ids"] for r in records], [[d["label_pos"] for d in r["demos"]] for r in records]


@pytest.fixture(scope="module", params=FAMILIES)
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    make_model_folder(path, request.param, seed=3 + FAMILIES.index(request.param))
    return str(path)


def _load(folder, attention="sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32).eval()


def _out_projection(attention):
    for name in ("o_proj", "out_proj", "c_proj", "dense"):
        module = getattr(attention, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise AssertionError(f"no output projection in {type(attention).__name__}")


def _reference_logits(model, sequences, edit):
    """Unpadded runs of ``model`` (eager) with ``edit(layer, x)`` applied to each output projection's input."""
    shape = model_shape(model)
    handles = []
    for layer, attention in enumerate(attention_modules(model)):

        def pre_hook(_module, inputs, layer=layer):
            x = inputs[0].clone().reshape(*inputs[0].shape[:-1], shape.n_heads, shape.head_dim)
            edit(layer, x)
            return (x.reshape(inputs[0].shape),)

        handles.append(_out_projection(attention).register_forward_pre_hook(pre_hook))
    try:
        with torch.inference_mode():
            return np.stack([model(torch.tensor([s])).logits[0, -1].float().numpy() for s in sequences])
    finally:
        for handle in handles:
            handle.remove()


HEADS = [(0, 1), (1, 0), (1, 3)]


@pytest.mark.slow
@pytest.mark.parametrize("rows", ["all", "last"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_zero_and_scale_equal_output_projection_slice(folder, sequences, rows, padding_side):
    seqs, _ = sequences
    model, eager = _load(folder), _load(folder, "eager")
    for mode, factor in (("zero", 0.0), ("scale", 0.5)):
        with CaptureSession(model, [HeadAblation(HEADS, mode, scale=factor, rows=rows)]) as session:
            logits = session.run(seqs, padding_side).numpy()

        def edit(layer, x, factor=factor):
            for lay, head in HEADS:
                if lay == layer:
                    if rows == "all":
                        x[..., head, :] *= factor
                    else:
                        x[:, -1, head, :] *= factor

        reference = _reference_logits(eager, seqs, edit)
        plain = _reference_logits(eager, seqs, lambda layer, x: None)
        assert np.abs(logits - reference).max() <= TOL
        assert np.abs(reference - plain).max() > 1e-3  # the ablation changes something


def test_mean_ablation_uses_given_vectors(folder, sequences):
    seqs, _ = sequences
    model, eager = _load(folder), _load(folder, "eager")
    outputs = HeadOutputs()
    with CaptureSession(model, [outputs]) as session:
        session.run(seqs, "right")
    means = outputs.outputs.numpy().mean(0)  # (layers, heads, d)
    # the recorded last-token outputs are the output projection's input slices at the last token
    seen = {}
    shape = model_shape(eager)
    handles = [
        _out_projection(a).register_forward_pre_hook(
            lambda _m, i, layer=layer: seen.setdefault(layer, []).append(i[0][0, -1].reshape(shape.n_heads, -1))
        )
        for layer, a in enumerate(attention_modules(eager))
    ]
    with torch.inference_mode():
        for s in seqs:
            eager(torch.tensor([s]))
    for handle in handles:
        handle.remove()
    expected = np.stack([torch.stack(seen[layer]).numpy() for layer in sorted(seen)], axis=1)
    assert np.abs(outputs.outputs.numpy() - expected).max() <= TOL
    with CaptureSession(model, [HeadAblation(HEADS, "mean", means=means, rows="last")]) as session:
        logits = session.run(seqs, "left").numpy()

    def edit(layer, x):
        for lay, head in HEADS:
            if lay == layer:
                x[:, -1, head, :] = torch.as_tensor(means[layer, head])

    assert np.abs(logits - _reference_logits(eager, seqs, edit)).max() <= TOL


KNOCK = {}


def _eager_knockout(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Hand-written eager attention; for the heads in KNOCK, the last row drops KNOCK's positions."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    length = scores.shape[-1]
    scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    if attention_mask is not None:
        scores = (
            scores.masked_fill(~attention_mask, float("-inf"))
            if attention_mask.dtype == torch.bool
            else scores + attention_mask
        )
    for head in KNOCK.get("heads", {}).get(module.layer_idx, []):
        scores[:, head, -1, KNOCK["positions"]] = float("-inf")
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value.float()).to(query.dtype).transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_knockout_equals_masked_eager_attention(folder, sequences, padding_side):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    seqs, label_pos = sequences
    AttentionInterface.register("kicl_test_knockout", _eager_knockout)
    AttentionMaskInterface.register("kicl_test_knockout", sdpa_mask)
    reference_model = _load(folder)
    reference_model.set_attn_implementation("kicl_test_knockout")
    heads = [(0, 0), (0, 2), (1, 1)]
    by_layer = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    reference, plain = [], []
    with torch.inference_mode():
        for sequence, positions in zip(seqs, label_pos):
            KNOCK.update(heads=by_layer, positions=positions)
            reference.append(reference_model(torch.tensor([sequence])).logits[0, -1].numpy())
            KNOCK.clear()
            plain.append(reference_model(torch.tensor([sequence])).logits[0, -1].numpy())
    knockout = AttentionKnockout(heads)
    model = _load(folder)
    with CaptureSession(model, [knockout]) as session:
        knockout.set_positions(label_pos)
        logits = session.run(seqs, padding_side).numpy()
    assert np.abs(logits - np.stack(reference)).max() <= TOL
    assert np.abs(np.stack(reference) - np.stack(plain)).max() > 1e-3


def test_sessions_leave_a_plain_model(folder, sequences):
    seqs, _ = sequences
    model = _load(folder)
    with torch.inference_mode():
        before = model(torch.tensor([seqs[0]])).logits
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    recorder = Recorder(kv_rows=[0], kv_positions=np.array([[0, 1]]))
    with CaptureSession(model, [recorder, HeadAblation([(0, 0)], "zero")]) as session:
        assert model.config._attn_implementation == CAPTURE_ATTENTION
        session.run(seqs, "right")
        with pytest.raises(ValueError, match="already in a capture session"):
            CaptureSession(model).__enter__()
    assert recorder.rows and recorder.keys
    assert model.config._attn_implementation == "sdpa"
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
    assert not any("_kicl_capture_session" in m.__dict__ for m in model.modules())
    with torch.inference_mode():
        after = model(torch.tensor([seqs[0]])).logits
    assert torch.equal(before, after)
    # a second session without handlers gives the plain logits
    with CaptureSession(model) as session:
        again = session.run([seqs[0]], "right")
    assert torch.allclose(again, before[:, -1].float(), atol=1e-5)


def test_cached_last_token_step_equals_full_pass(folder, sequences):
    """prefill + step (the causal stage's path) gives the full pass's logits, with and without interventions."""
    seqs, label_pos = sequences
    model = _load(folder)
    outputs = HeadOutputs()
    with CaptureSession(model, [outputs]) as session:
        full = session.run(seqs, "right")
        full_outputs = outputs.outputs.clone()
        prefix = session.prefill(seqs)
        cached = session.step(prefix)
        assert torch.allclose(outputs.outputs, full_outputs, atol=1e-5)
    assert torch.allclose(cached, full, atol=1e-4)
    means = full_outputs.numpy().mean(0)
    for make in (
        lambda: HeadAblation(HEADS, "zero", rows="last"),
        lambda: HeadAblation(HEADS, "mean", means=means, rows="last"),
        lambda: AttentionKnockout(HEADS),
    ):
        handler = make()
        with CaptureSession(model, [handler]) as session:
            if isinstance(handler, AttentionKnockout):
                handler.set_positions(label_pos)
            expected = session.run(seqs, "right")
            prefix = session.prefill(seqs)
            for _ in range(2):  # the cache is cropped back: the same prefix serves again
                if isinstance(handler, AttentionKnockout):
                    handler.set_positions(label_pos)
                assert torch.allclose(session.step(prefix), expected, atol=1e-4)
        assert not torch.allclose(expected, full, atol=1e-3)
