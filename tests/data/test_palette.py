import numpy as np
import pytest

from ssp.data.palette import NUM_CLASSES, PALETTE, colour_to_index, index_to_colour
from tests.avsbench_fixtures import PALETTE as RELEASE_PALETTE


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


def test_matches_the_official_palette_both_ways():
    # the fixture's palette is computed from the official definition, not from ssp's
    assert RELEASE_PALETTE.shape == (NUM_CLASSES, 3)
    np.testing.assert_array_equal(PALETTE, RELEASE_PALETTE)
    index = np.arange(NUM_CLASSES).reshape(1, -1)
    decoded, unknown = colour_to_index(RELEASE_PALETTE[index])
    np.testing.assert_array_equal(decoded, index)
    assert not unknown.any()
    np.testing.assert_array_equal(index_to_colour(index), RELEASE_PALETTE[index])


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
