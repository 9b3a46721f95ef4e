import numpy as np
import pytest

from ssp.data.palette import NUM_CLASSES, PALETTE, colour_to_index, index_to_colour


def test_voc_bit_interleave_colours():
    assert PALETTE.shape == (NUM_CLASSES, 3)
    assert PALETTE[:9].tolist() == [
        [0, 0, 0],
        [128, 0, 0],
        [0, 128, 0],
        [128, 128, 0],
        [0, 0, 128],
        [128, 0, 128],
        [0, 128, 128],
        [128, 128, 128],
        [64, 0, 0],
    ]
    assert PALETTE[70].tolist() == [32, 128, 128]  # 70 = 0b1_000_110: bits (r,g,b) per octal digit, high bits first
    assert len({tuple(c) for c in PALETTE}) == NUM_CLASSES


def test_round_trip_and_unknown_colours():
    rng = np.random.default_rng(0)
    index = rng.integers(0, NUM_CLASSES, size=(6, 7))
    decoded, unknown = colour_to_index(index_to_colour(index))
    assert (decoded == index).all() and not unknown.any()

    rgb = index_to_colour(index)
    rgb[2, 3] = (1, 2, 3)  # not a palette colour
    rgb[4, 4] = PALETTE[1] + 1  # near miss
    rgb[0, 0] = index_to_colour(np.array([[71]]))[0, 0]  # palette colour of a class beyond 70
    decoded, unknown = colour_to_index(rgb)
    assert sorted(zip(*np.nonzero(unknown))) == [(0, 0), (2, 3), (4, 4)]
    assert decoded[2, 3] == 0


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="H x W x 3"):
        colour_to_index(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        index_to_colour(np.array([[-1]]))
