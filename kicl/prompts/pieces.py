"""Piecewise tokenisation of prompts: the part of prompt building that the forward pass needs too.

Each piece of a prompt (an input, a label word, a delimiter) is tokenised on its own and the ids are concatenated,
so span boundaries are exact; see :mod:`kicl.prompts.build` for the layout. This module needs only a tokenizer
(no pandas, no task tables), so the capture can rebuild a query exactly like the prompts without importing the
prompt builder.
"""

from __future__ import annotations

from collections.abc import Sequence


class PromptError(ValueError):
    """A prompt cannot be built as configured; the message names the task, model and culprit."""


class VerbalizerError(PromptError):
    """Label words that are not single tokens (or whose first tokens collide)."""


def split_trailing_spaces(text: str) -> tuple[str, str]:
    """(text without its trailing spaces/tabs, those spaces)."""
    stripped = text.rstrip(" \t")
    return stripped, text[len(stripped) :]


def render_query(template: dict, text: str) -> str:
    """One input on its own in the template, ending where the label word would follow.

    Used for P(o|x) with the template as context: ``input_prefix + text + output_prefix``.
    """
    return f"{template['input_prefix']}{text}{template['output_prefix']}"


class PieceTokenizer:
    """Tokenises prompt pieces separately (cached) and checks that each piece decodes back to itself."""

    ANCHOR = "\n"

    def __init__(self, tokenizer, where: str = ""):
        self.tokenizer = tokenizer
        self.where = where
        self.cache: dict[str, list[int]] = {}
        self.prefix_ids = self._special_prefix()
        self.anchor_ids = list(tokenizer(self.ANCHOR, add_special_tokens=False)["input_ids"])

    def _special_prefix(self) -> list[int]:
        """Special tokens the tokenizer puts before a text (e.g. <s>/<bos>), found by comparison."""
        with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                return list(with_special[:start])
        return []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)

    def _fits_in_context(self, ids: Sequence[int], piece: str) -> bool:
        """Whether ids, placed after the anchor text, decode to exactly the anchor text + piece."""
        return self.decode(self.anchor_ids + list(ids)) == self.decode(self.anchor_ids) + piece

    def encode(self, piece: str) -> list[int]:
        """Token ids of a piece as it reads inside a prompt (after other text); raises PromptError if none do.

        The piece is tokenised on its own; if that does not decode back to it inside a prompt (SentencePiece
        tokenisers such as Llama-2's add a word-boundary marker at the start of every text), it is tokenised
        after an anchor ("\n") and the anchor's tokens are removed.
        """
        if piece not in self.cache:
            ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if self.decode(ids) != piece or not self._fits_in_context(ids, piece):
                anchored = self.tokenizer(self.ANCHOR + piece, add_special_tokens=False)["input_ids"]
                n_anchor = len(self.anchor_ids)
                ids = anchored[n_anchor:]
                if anchored[:n_anchor] != self.anchor_ids or not ids or not self._fits_in_context(ids, piece):
                    raise PromptError(
                        f"{self.where}: the tokenizer {getattr(self.tokenizer, 'name_or_path', '')!r} cannot "
                        f"tokenise the piece {piece!r} on its own so that it decodes back to itself inside a prompt "
                        f"(got {self.decode(ids)!r}); piecewise prompts need a tokenizer that decodes its tokens "
                        "losslessly (byte-level BPE, tiktoken, SentencePiece with byte fallback)"
                    )
            self.cache[piece] = list(ids)
        return self.cache[piece]

    def label_token_ids(self, verbalizers: Sequence[str], readout: str) -> list[int]:
        """The token id scored for each label word: its only token, or its first token under first_token.

        Raises VerbalizerError listing every offending word before any forward pass.
        """
        encoded = {word: self.encode(word) for word in verbalizers}
        if readout == "single_token":
            bad = {w: ids for w, ids in encoded.items() if len(ids) != 1}
            if bad:
                listing = "; ".join(f"{w!r} -> {[self.decode([i]) for i in ids]}" for w, ids in bad.items())
                raise VerbalizerError(
                    f"{self.where}: label words that are not a single token for tokenizer "
                    f"{getattr(self.tokenizer, 'name_or_path', '')!r}: {listing}. Choose single-token words in "
                    "the task's verbalizers, or set protocol.readout: first_token."
                )
            return [ids[0] for ids in encoded.values()]
        if readout == "first_token":
            empty = [w for w, ids in encoded.items() if not ids]
            if empty:
                raise VerbalizerError(f"{self.where}: label words with no tokens: {empty}")
            firsts = [ids[0] for ids in encoded.values()]
            if len(set(firsts)) != len(firsts):
                clashes = {
                    self.decode([t]): [w for w in verbalizers if encoded[w][0] == t]
                    for t in set(firsts)
                    if firsts.count(t) > 1
                }
                raise VerbalizerError(
                    f"{self.where}: label words share their first token, so first-token scoring cannot tell them "
                    f"apart: {clashes}. Choose label words with distinct first tokens."
                )
            return firsts
        raise PromptError(f"protocol.readout {readout!r}: use single_token or first_token")


def query_ids(tokenizer, template: dict, text: str) -> list[int]:
    """Token ids of :func:`render_query` built piecewise like the prompts (special prefix included)."""
    pieces = PieceTokenizer(tokenizer, "render_query")
    head, space = split_trailing_spaces(template["input_prefix"])
    ids = list(pieces.prefix_ids)
    for piece in (head, space + text, template["output_prefix"]):
        if piece:
            ids.extend(pieces.encode(piece))
    return ids
