"""Pre-train a small causal transformer (GPT-J or Llama config, random init, seeded) on the label world.

The corpus is the mixture-of-HMM pre-training distribution of :mod:`kicl.theory.icl_world` (delimiter resets,
one task per row). Training is next-token loss on every token, with the label tokens optionally weighted more
(:func:`weighted_loss`; the Bayes-optimal predictor is unchanged); AdamW with linear warm-up and cosine decay over
a *token budget* (not a wall budget, so the result does not depend on machine load); fused (sdpa) attention and
optional bfloat16 CPU autocast with float32 master weights. The model is
saved with ``save_pretrained`` (safetensors) next to a tokenizer over the world's symbols, so it enters the
``models:`` catalog as an ordinary ``source: local`` model. ``torch.set_flush_denormal(True)`` is set: without
it denormals in the AdamW state slow CPU steps several-fold (feasibility note §3).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.fileio import atomic_directory, write_csv_atomic
from kicl.theory.icl_options import ModelOptions, TheoryICLOptions
from kicl.theory.icl_world import (
    DELIMITER,
    MARKER,
    LabelWorld,
    sample_documents,
    seeded_stream,
    world_from_config,
)

log = logging.getLogger(__name__)

ARCHITECTURES = ("gptj", "llama")


def build_tokenizer(world: LabelWorld):
    """A fast word-level tokenizer over the world's symbols; ids equal the world's token ids.

    Every symbol carries its leading space (byte-level convention, space → "Ġ"), the delimiter doubles as the
    BOS that ``add_special_tokens`` puts in front of a text, and unknown text maps to ``<unk>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol.replace(" ", "Ġ"): index for index, symbol in enumerate(world.symbols())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?[^ ]+| +"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    bos = world.symbols()[DELIMITER].replace(" ", "Ġ")
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, DELIMITER)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=bos, unk_token="<unk>", pad_token="<pad>"
    )


def model_config(world: LabelWorld, model_cfg: ModelOptions):
    """A transformers config of the ``theory_icl.model`` section (random init, no dropout, untied head)."""
    arch = model_cfg.architecture
    width, heads = model_cfg.n_embd, model_cfg.n_head
    if width % heads:
        raise ValueError(f"theory_icl.model: n_embd {width} is not a multiple of n_head {heads}")
    common = {"vocab_size": world.vocab_size, "bos_token_id": DELIMITER, "eos_token_id": DELIMITER,
              "pad_token_id": world.vocab_size - 1, "tie_word_embeddings": False}  # fmt: skip
    if arch == "gptj":
        from transformers import GPTJConfig

        return GPTJConfig(
            n_positions=model_cfg.ctx, n_embd=width, n_layer=model_cfg.n_layer, n_head=heads,
            rotary_dim=max(2, (width // heads) // 2), n_inner=4 * width, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, activation_function=model_cfg.activation, **common,
        )  # fmt: skip
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=width, intermediate_size=4 * width, num_hidden_layers=model_cfg.n_layer,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=model_cfg.ctx,
            attention_dropout=0.0, hidden_act=model_cfg.activation, **common,
        )  # fmt: skip
    raise ValueError(f"theory_icl.model.architecture {arch!r}: use one of {ARCHITECTURES}")


def learning_rate(step: int, total: int, peak: float, warmup: int, final_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``peak`` to ``final_ratio * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


AUTOCAST_DTYPES = ("none", "bfloat16")


def _autocast(name: str):
    """The CPU autocast context of ``theory_icl.train.autocast`` (master weights and AdamW state stay float32)."""
    import contextlib

    import torch

    if name == "none":
        return contextlib.nullcontext()
    if name == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"theory_icl.train.autocast {name!r}: use one of {AUTOCAST_DTYPES}")


def pretrain(cfg: TheoryICLOptions, out_dir: str | Path, loss_csv: str | Path, threads: int = 1) -> pd.DataFrame:
    """Train the model of ``cfg`` (the ``theory_icl`` section), save it to out_dir; returns the loss curve.

    Runs on at most ``theory_icl.train.threads`` of the job's ``threads`` (torch intra-op threads).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model_cfg, train = cfg.model, cfg.train
    threads = max(1, min(threads, train.threads))
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    world = world_from_config(cfg.world)
    torch.manual_seed(train.seed)
    rng = seeded_stream(train.seed, "corpus")
    model = AutoModelForCausalLM.from_config(model_config(world, model_cfg), attn_implementation=train.attention)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    ctx, batch = model_cfg.ctx, train.batch_size
    steps = max(1, int(train.tokens) // (ctx * batch))
    optimiser = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(0.9, 0.98),
                                  weight_decay=train.weight_decay)  # fmt: skip
    log.info("theory_icl: %s %dL d=%d %dH, %d parameters; %d steps of %dx%d tokens, %d threads, %s attention, "
             "autocast %s, label loss weight %g", model_cfg.architecture, model_cfg.n_layer, model_cfg.n_embd,
             model_cfg.n_head, n_params, steps, batch, ctx, threads, train.attention, train.autocast,
             train.label_loss_weight)  # fmt: skip
    rows, started = [], time.perf_counter()
    window = []
    for step in range(steps):
        docs, _ = sample_documents(world, batch, ctx, cfg.world.min_len, cfg.world.max_len, rng)
        ids = torch.from_numpy(docs)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, steps, train.lr, train.warmup, train.final_lr_ratio)
        with _autocast(train.autocast):
            losses = token_losses(model(input_ids=ids).logits, ids)
        loss = weighted_loss(losses, ids, train.label_loss_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        with torch.no_grad():
            window.append((float(loss), float(losses.mean()), float(losses[ids[:, :-1] == MARKER].mean())))
        if not math.isfinite(window[-1][0]):
            raise FloatingPointError(f"theory_icl.train: loss is {window[-1][0]} at step {step + 1} "
                                     f"(autocast {train.autocast!r}, lr {train.lr})")  # fmt: skip
        if (step + 1) % train.log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - started
            objective, plain, label = np.mean(window, axis=0)
            rows.append({"step": step + 1, "tokens": (step + 1) * batch * ctx, "loss": plain, "label_loss": label,
                         "objective": objective, "lr": optimiser.param_groups[0]["lr"],
                         "elapsed_s": elapsed})  # fmt: skip
            rate = (step + 1) / max(elapsed, 1e-9)
            log.info("step %d/%d loss %.4f, label-token loss %.4f (%.0f tok/s, %.1f steps/s)", step + 1, steps,
                     plain, label, rate * batch * ctx, rate)  # fmt: skip
            window = []
    wall = time.perf_counter() - started
    log.info("theory_icl: trained %d tokens in %.1f s (%.0f tok/s, %.2f steps/s)", steps * batch * ctx, wall,
             steps * batch * ctx / wall, steps / wall)  # fmt: skip
    model.eval()
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        staging.mkdir(parents=True)
        model.save_pretrained(staging, safe_serialization=True)
        build_tokenizer(world).save_pretrained(staging)
        (staging / "kicl_training.json").write_text(json.dumps(
            {"theory_icl": cfg.as_dict(), "n_parameters": n_params, "steps": steps, "tokens": steps * batch * ctx,
             "wall_s": wall, "tokens_per_s": steps * batch * ctx / wall, "threads": threads},
            indent=1) + "\n")  # fmt: skip
    curve = pd.DataFrame(rows)
    write_csv_atomic(curve, loss_csv)
    return curve


def token_losses(logits, ids):
    """Next-token cross-entropy (B, T − 1) of logits (B, T, V) for ids (B, T), in float32."""
    import torch

    logits, targets = logits[:, :-1].float(), ids[:, 1:]
    flat = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return flat.view_as(targets)


def weighted_loss(losses, ids, label_weight: float = 1.0):
    """The training objective: mean of ``token_losses`` with label targets weighted ``label_weight``, others 1.

    A label target is the token after the answer marker, so the weight depends only on the prefix and the loss is
    still minimised by the true next-token distribution at every position: the Bayes-optimal predictor is
    unchanged, only the share of the gradient that comes from the ICL answers grows.
    """
    import torch

    if label_weight == 1.0:
        return losses.mean()
    weights = torch.where(ids[:, :-1] == MARKER, label_weight, 1.0)
    return (losses * weights).sum() / weights.sum()
