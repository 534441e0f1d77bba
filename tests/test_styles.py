"""Style specs -> normalized weight vectors: indices, names, blends, and the error messages."""

from __future__ import annotations

import pytest
import torch

from stylize.errors import StylizeError
from stylize.styles import style_weights

NAMES = ["starry_night", "wave", "the_scream", "udnie"]


def _vec(**weights: float) -> torch.Tensor:
    out = torch.zeros(len(NAMES))
    for name, w in weights.items():
        out[NAMES.index(name)] = w
    return out


def test_none_is_style_zero():
    assert torch.equal(style_weights(None, 26), torch.eye(26)[0])
    assert torch.equal(style_weights(None, 1), torch.ones(1))


@pytest.mark.parametrize("spec", [3, "3", " 3 ", "+3", torch.tensor(3)])
def test_index(spec):
    w = style_weights(spec, 26)
    assert w.dtype == torch.float32 and w.shape == (26,)
    assert torch.equal(w, torch.eye(26)[3])


def test_names_exact_and_case_insensitive():
    assert torch.equal(style_weights("wave", 4, NAMES), _vec(wave=1))
    assert torch.equal(style_weights("The_Scream", 4, NAMES), _vec(the_scream=1))
    assert torch.equal(style_weights(1, 4, NAMES), _vec(wave=1))


def test_string_blends_are_normalized():
    torch.testing.assert_close(
        style_weights("3:0.5,12:0.5", 26), (torch.eye(26)[3] + torch.eye(26)[12]) / 2
    )
    torch.testing.assert_close(style_weights("0:1, 2:3", 4), torch.tensor([0.25, 0, 0.75, 0]))
    torch.testing.assert_close(
        style_weights("wave:2,udnie:6", 4, NAMES), _vec(wave=0.25, udnie=0.75)
    )
    torch.testing.assert_close(style_weights("0,3", 4), torch.tensor([0.5, 0, 0, 0.5]))
    torch.testing.assert_close(style_weights("1:1,wave:1", 4, NAMES), _vec(wave=1.0))  # same style
    torch.testing.assert_close(style_weights("0:0,1:2", 4), torch.tensor([0.0, 1, 0, 0]))


def test_dict_and_vector_specs():
    torch.testing.assert_close(
        style_weights({3: 0.5, 12: 0.5}, 26)[[3, 12]], torch.tensor([0.5, 0.5])
    )
    torch.testing.assert_close(
        style_weights({"wave": 1, 0: 3}, 4, NAMES), _vec(starry_night=0.75, wave=0.25)
    )
    torch.testing.assert_close(style_weights([1, 1, 0, 2], 4), torch.tensor([0.25, 0.25, 0, 0.5]))
    torch.testing.assert_close(style_weights(torch.tensor([0.0, 4.0]), 2), torch.tensor([0.0, 1.0]))
    assert abs(float(style_weights({i: 1 / 3 for i in range(3)}, 3).sum()) - 1) < 1e-6


@pytest.mark.parametrize(
    "spec,message",
    [
        (26, r"style index 26 is out of range; this model has 26 styles \(valid: 0-25\)"),
        ("30", r"valid: 0-25"),
        (-1, r"style index -1 is out of range.*valid: 0-25"),
        ("3:0.5,40:0.5", r"style index 40 is out of range.*0-25"),
        ("starry", r"unknown style 'starry'.*0-25"),
        ("3:-1", r"must be a finite number >= 0"),
        ("3:nan", r"must be a finite number >= 0"),
        ("3:abc", r"'abc'.*not a number"),
        ("3:0,4:0", r"sum to 0"),
        ("3,,4", r"empty entry"),
        ("", r"empty style name"),
        ({}, r"empty style spec"),
        (True, r"not an index or a name"),
        (2.5, r"not an index or a name"),
        ([1.0, 2.0], r"needs exactly 26 numbers, got 2"),
    ],
)
def test_errors(spec, message):
    with pytest.raises(StylizeError, match=message):
        style_weights(spec, 26)


def test_error_lists_names():
    with pytest.raises(StylizeError, match=r"valid: 0-3, or a name: starry_night, wave"):
        style_weights("sunflowers", 4, NAMES)
    with pytest.raises(StylizeError, match=r"this model has 1 style \(valid: 0\)"):
        style_weights(1, 1)


def test_unnamed_models_do_not_list_index_names():
    with pytest.raises(StylizeError) as info:
        style_weights("x", 3, ["0", "1", "2"])
    assert "or a name" not in str(info.value)


def test_programming_errors():
    with pytest.raises(ValueError):
        style_weights(0, 0)
    with pytest.raises(ValueError):
        style_weights(0, 3, ["a"])
