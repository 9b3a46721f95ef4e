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


class AudioPixelSimilarity(nn.Module):
    """A per-pixel audio-visual match added to every mask logit (``audio_fusion="similarity"``).

    s(x) = <W_v f(x), W_a a> / sqrt(D) between the mask feature f(x) of each position and the
    frame's projected audio a, added to the mask logits of every query and decoder layer. Both
    sides carry the class on their own (bench/README.md, Probes: linear probes ~100 %); what the
    queries never learned is to match them. This bilinear term is that match, one step from the
    mask loss: where a silent object's pixels are called foreground the loss lowers s there for
    this audio. W_a starts at zero, so the model starts as AAVS.
    """

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.visual = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1)
        self.audio = nn.Linear(hidden_dim, hidden_dim)
        nn.init.zeros_(self.audio.weight)
        nn.init.zeros_(self.audio.bias)
        self.scale = hidden_dim**-0.5

    def forward(self, mask_features: Tensor, audio: Tensor) -> Tensor:
        """N×D×h×w mask features, N×D audio -> N×1×h×w logit offset."""
        visual = self.visual(mask_features)
        return torch.einsum("ndhw,nd->nhw", visual, self.audio(audio).to(visual.dtype))[:, None] * self.scale


class ClassCodeMatch(nn.Module):
    """The class-level audio-visual match (``class_aux > 0``, either stage).

    Both sides get explicit class codes over the K object classes: pixel class logits
    v(x) = W_v f(x) from the mask features (1×1 conv) and audio class logits u = W_a a from
    the projected audio. The criterion teaches them with the class masks (``class_aux_loss``:
    the sounding classes of the frame, multi-label, for u; the class of each sounding pixel
    for v): stage 1 otherwise never sees them, stage 2 otherwise learns classes per query
    only. The match that reaches the mask is the probability that the pixel's class sounds,
    p(x) = Σ_k softmax(v(x))_k · sigmoid(u_k), added to every mask logit as ``gain · logit(p)``
    (p clamped to [0.01, 0.99]). At init sigmoid(u) ≈ 0.5 everywhere, so logit(p) ≈ 0 and the
    model starts as AAVS; the gain (learned, starts at ``class_match_gain``) is what the mask
    loss tunes. With class structure on each
    side the frozen-feature probe decides 85 % of the objects, against 74 % for an
    unstructured bilinear match (bench/README.md, Probes (issue 16)).
    """

    def __init__(self, hidden_dim: int, num_object_classes: int, gain: float = 1.0):
        super().__init__()
        self.visual = nn.Conv2d(hidden_dim, num_object_classes, kernel_size=1)
        self.audio = nn.Linear(hidden_dim, num_object_classes)
        self.gain = nn.Parameter(torch.full((), float(gain)))

    def forward(self, mask_features: Tensor, audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """N×D×h×w mask features, N×D audio -> (N×1×h×w mask-logit offset, N×K×h×w pixel
        class logits, N×K audio class logits)."""
        pixel_logits = self.visual(mask_features)
        audio_logits = self.audio(audio).to(pixel_logits.dtype)
        sounding = torch.einsum("nkhw,nk->nhw", pixel_logits.softmax(1), audio_logits.sigmoid())
        offset = self.gain * torch.logit(sounding.clamp(0.01, 0.99))
        return offset[:, None], pixel_logits, audio_logits


def pixel_class_codes(pixel_logits: Tensor, audio_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """r_c(x) = softmax(v(x))_c · sigmoid(u_c) at ``size``: the probability that the pixel is of
    class c and that c sounds (N×K×H×W; the pixel logits upsampled before the softmax)."""
    codes = nn.functional.interpolate(pixel_logits.float(), size=size, mode="bilinear", align_corners=False)
    return codes.softmax(1) * audio_logits.float().sigmoid()[:, :, None, None]


def class_code_readout(scores: Tensor, pixel_logits: Tensor, audio_logits: Tensor) -> Tensor:
    """Stage 2's class scores read with the class codes (``class_readout="codes"``).

    ``scores``: N×C×H×W, Mask2Former's semantic scores s_c(x) = Σ_q p_q(c) m_q(x) (class 0 =
    background); ``pixel_logits``: N×(C-1)×h×w pixel class logits v(x) and ``audio_logits``:
    N×(C-1) audio class logits u of :class:`ClassCodeMatch`. The object mass M(x) = Σ_{c≥1} s_c(x)
    stays where the queries put it; the codes decide how it splits over the classes:
    s'_c(x) = M(x) · s_c(x) r_c(x) / Σ_{c'≥1} s_c'(x) r_c'(x), with r_c(x) of
    :func:`pixel_class_codes`. Background is left as it is, so the codes change which class a
    pixel gets, not whether it is an object.
    """
    codes = pixel_class_codes(pixel_logits, audio_logits, scores.shape[-2:])
    objects = scores[:, 1:]
    mass = objects.sum(1, keepdim=True)
    weighted = objects * codes.to(objects.dtype)
    total = weighted.sum(1, keepdim=True)
    # where every code is ~0 (or no object mass) keep the queries' split
    split = torch.where(total > 1e-12, weighted / total.clamp_min(1e-12), objects / mass.clamp_min(1e-12))
    return torch.cat([scores[:, :1], mass * split], dim=1)
