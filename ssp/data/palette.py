"""The AVSBench-semantic colour palette and colour-mask decoding.

AVSBench-semantic stores masks as RGB PNGs; class k has the Pascal-VOC palette colour
(bits of k interleaved into the high bits of R, G, B): 0 -> (0,0,0), 1 -> (128,0,0),
2 -> (0,128,0), 3 -> (128,128,0), ... There are 71 classes: background (0) + 70.
This is the official palette (``get_v2_pallete`` in the AVSBench AVSS loader); class k
is the k-th entry of the released ``label2idx.json`` counting from 0 (its value - 1).
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 71


def voc_palette(n: int = 256) -> np.ndarray:
    """Return an ``n x 3`` uint8 array, row k = colour of class k."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[k] = (r, g, b)
    return pal


PALETTE = voc_palette(NUM_CLASSES)


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_PACKED = _pack(PALETTE)
_ORDER = np.argsort(_PACKED)  # built once: decoding runs per mask in the data loader
_SORTED_KEYS = _PACKED[_ORDER]


def colour_to_index(rgb: np.ndarray, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Decode an ``H x W x 3`` uint8 colour mask into class indices.

    Returns ``(index, unknown)``: ``index`` is ``H x W`` int64 (0 where unknown),
    ``unknown`` is a boolean ``H x W`` map of pixels whose colour is not a palette
    colour of the first ``num_classes`` classes. Callers decide whether that is an
    error (validation reports it; the official loader silently maps it to 0).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 colour mask, got shape {rgb.shape}")
    packed = _pack(rgb)
    if num_classes == NUM_CLASSES:
        order, sorted_keys = _ORDER, _SORTED_KEYS
    else:
        keys = _pack(voc_palette(num_classes))
        order = np.argsort(keys)
        sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, packed), 0, len(sorted_keys) - 1)
    found = sorted_keys[pos] == packed
    index = np.where(found, order[pos], 0).astype(np.int64)
    return index, ~found


def index_to_colour(index: np.ndarray) -> np.ndarray:
    """Encode an ``H x W`` class-index mask as an ``H x W x 3`` uint8 colour mask."""
    index = np.asarray(index)
    if index.min(initial=0) < 0 or index.max(initial=0) >= 256:
        raise ValueError("class indices must be in [0, 255]")
    return voc_palette(256)[index]
