"""The one head identifier (kicl.store.heads.HeadId): its label, its parser and a flat index."""

import numpy as np
import pytest

from kicl.store.heads import HeadId


def test_label_parse_round_trip_and_flat_index():
    head = HeadId(np.int64(3), np.intp(7))  # numpy integers, as argmax/unravel_index give them
    assert head.label == str(head) == "L3H7" and type(head.layer) is int
    assert HeadId.parse("L3H7") == head == HeadId.from_flat(3 * 8 + 7, 8)
    assert sorted([HeadId(1, 0), HeadId(0, 5)]) == [HeadId(0, 5), HeadId(1, 0)]


@pytest.mark.parametrize("label", ["L3 H7", "3,7", "L3H", "l3h7"])
def test_parse_names_a_bad_label(label):
    with pytest.raises(ValueError, match="is not of the form L<layer>H<head>"):
        HeadId.parse(label)


def test_a_float_layer_is_refused():
    with pytest.raises(TypeError):
        HeadId(1.5, 0)
