"""Fixtures of the model tests (helpers that are not fixtures: helpers.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from tests.models.helpers import WORDS


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These models are tiny: one intra-op thread is as fast, and immune to the
    oversubscription that makes 2-thread runs 10x slower when other jobs share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> str:
    """A random 2-layer, 32-wide BERT with a word-level vocab, saved like a HF model dir."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=5 + len(WORDS),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).save_pretrained(path)
    BertTokenizer(str(vocab)).save_pretrained(path)
    return str(path)
