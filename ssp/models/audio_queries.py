"""Audio-aware queries of AAVS.

The 128-d audio embedding of a frame (VGGish or the tiny encoder) is projected to the
decoder width by Linear(128, 512) - ReLU - Linear(512, D). Each learnable query then gets
that audio embedding added, weighted by the cosine similarity between the query and
the audio embedding:

    q_i(frame) = f_i + cos(e_i, a(frame)) * a(frame)

where f_i is the query's content feature (``queries_features``, the decoder input) and
e_i the query's learnable embedding (``queries_embedder``, its positional part). Using the
positional embedding for the similarity follows the public AAVS code
(GeWu-Lab/Stepping-Stones); both are learnable per-query vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AudioProjection(nn.Sequential):
    """Linear(128, 512) - ReLU - Linear(512, hidden_dim), as in AAVS."""

    def __init__(self, hidden_dim: int, audio_dim: int = 128, inner_dim: int = 512):
        super().__init__(nn.Linear(audio_dim, inner_dim), nn.ReLU(), nn.Linear(inner_dim, hidden_dim))


def audio_aware_queries(query_features: Tensor, query_embeddings: Tensor, audio: Tensor) -> Tensor:
    """Add the cosine-weighted audio embedding to every query of every frame.

    Args:
        query_features: Q×D learnable query features (decoder input).
        query_embeddings: Q×D learnable query embeddings (used for the similarity).
        audio: N×D projected audio embedding per frame.

    Returns:
        Q×N×D queries (the sequence-first layout of Mask2Former's decoder).
    """
    similarity = torch.nn.functional.cosine_similarity(query_embeddings[:, None, :], audio[None, :, :], dim=-1)  # Q×N
    return query_features[:, None, :] + similarity[:, :, None] * audio[None, :, :]
