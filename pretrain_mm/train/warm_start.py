"""Starting from another run's weights: the text tower from a masked-language-modelling run (model.text_init_from),
and the check that two runs read captions alike (a teacher's, such a run's)."""

from __future__ import annotations

from pathlib import Path

import torch

from pretrain_mm.builders import build_tokenizer
from pretrain_mm.data import Tokenizer
from pretrain_mm.interop.weights import config_of, load_weights, state_mismatch, weights_file_of
from pretrain_mm.models import TextTransformer


def check_same_tokenizer(other_cfg, tokenizer: Tokenizer, what: str) -> None:
    """A ValueError naming `what` when the run of other_cfg tokenised captions otherwise than `tokenizer` does."""
    theirs = build_tokenizer(other_cfg.data)
    if theirs.hf.to_str() != tokenizer.hf.to_str() or theirs.context_length != tokenizer.context_length:
        raise ValueError(
            f"{what} reads captions with another tokenizer ({theirs}) than this run ({tokenizer}): set "
            "data.tokenizer and data.context_length as its run had them"
        )


def finished_weights(source, key: str) -> Path:
    """The model.safetensors of a finished run (or the file itself); a ValueError naming `key` otherwise."""
    weights = weights_file_of(Path(str(source)).expanduser())
    if weights is None:
        raise ValueError(
            f"{key}={source}: not a model.safetensors nor a finished run directory holding one; a DCP "
            "checkpoint's metadata is a pickle, so export it first: python -m pretrain_mm.export <checkpoint> <dir>"
        )
    return weights


def load_text_tower(model: torch.nn.Module, source, tokenizer: Tokenizer) -> None:
    """Copy the text tower (`text.*`) of a finished run, an mlm one (+exp=mlm) or a CLIP / CoCa, into `model`'s.
    The mask id's row of an MLM run's token embedding is dropped where `model` does not learn MLM itself."""
    weights = finished_weights(source, "model.text_init_from")
    check_same_tokenizer(config_of(weights), tokenizer, f"model.text_init_from={weights}")
    text = getattr(model, "text", None)
    assert isinstance(text, TextTransformer), "a CLIP or CoCa has a text tower"
    state = {k.removeprefix("text."): v for k, v in load_weights(weights).items() if k.startswith("text.")}
    rows = text.token_embedding.num_embeddings
    embedding = state.get("token_embedding.weight")
    if embedding is not None and embedding.shape[0] == rows + 1:  # the MLM run's mask id: not used here
        state["token_embedding.weight"] = embedding[:rows]
    mismatch = state_mismatch(state, text.state_dict())
    if mismatch:
        raise ValueError(
            f"model.text_init_from={weights}: its text tower does not fit this model's: {mismatch}; set model.size "
            "(or model.args.text_*) as its run had them"
        )
    text.load_state_dict(state)
