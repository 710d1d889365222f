"""Differentiable augmentation of D's inputs (nirgan.training.diff_augment): each transform does
what the paper's does, gradients pass, rank slices match the global draws, and an empty policy
draws nothing (so a run without it keeps its random sequence and its resume)."""

from __future__ import annotations

import pytest
import torch

from nirgan.training.diff_augment import POLICIES, draw_augment, diff_augment

CPU = torch.device("cpu")


def draws(policy, n=6, size=16, seed=0):
    return draw_augment(policy, n, size, torch.Generator().manual_seed(seed), CPU)


def test_translation_shifts_by_the_drawn_offsets_and_fills_with_zeros():
    x = torch.randn(6, 1, 16, 16)
    d = draws(["translation"])
    assert d.shift.abs().max() <= 2 and d.brightness is None and d.cutout is None  # 1/8 of 16
    y = diff_augment(x, d)
    for i, (dy, dx) in enumerate(d.shift.tolist()):
        ref = torch.zeros(16, 16)
        ys, xs = slice(max(dy, 0), 16 + min(dy, 0)), slice(max(dx, 0), 16 + min(dx, 0))
        ref[ys, xs] = x[i, 0, max(-dy, 0):16 - max(dy, 0), max(-dx, 0):16 - max(dx, 0)]
        assert torch.equal(y[i, 0], ref), (i, dy, dx)


def test_cutout_zeroes_at_most_a_square_of_half_the_side_around_its_centre():
    x = torch.ones(6, 1, 16, 16)
    d = draws(["cutout"])
    y = diff_augment(x, d)
    for i, (cy, cx) in enumerate(d.cutout.tolist()):
        zero = (y[i, 0] == 0).nonzero()
        expect = (min(cy + 4, 16) - max(cy - 4, 0)) * (min(cx + 4, 16) - max(cx - 4, 0))
        assert len(zero) == expect
        if len(zero):
            assert zero[:, 0].min() == max(cy - 4, 0) and zero[:, 1].min() == max(cx - 4, 0)


def test_brightness_and_contrast_keep_the_layout_and_their_ranges():
    x = torch.randn(6, 1, 16, 16)
    d = draws(["brightness", "contrast"])
    assert ((d.brightness >= -0.5) & (d.brightness < 0.5)).all() and ((d.contrast >= 0.5) & (d.contrast < 1.5)).all()
    y = diff_augment(x, d)
    shifted = x + d.brightness.view(-1, 1, 1, 1)
    mean = shifted.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(y, (shifted - mean) * d.contrast.view(-1, 1, 1, 1) + mean)


def test_gradients_pass_and_rank_slices_are_the_global_draws():
    x = torch.randn(6, 1, 16, 16, requires_grad=True)
    d = draws(list(POLICIES))
    diff_augment(x, d).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    whole = diff_augment(x.detach(), d)
    halves = torch.cat([diff_augment(x.detach()[:3], d.rows(0, 3)), diff_augment(x.detach()[3:], d.rows(3, 6))])
    assert torch.equal(whole, halves)


def test_an_empty_policy_draws_nothing_and_a_wrong_name_is_refused():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert draw_augment([], 6, 16, g, CPU) is None and torch.equal(g.get_state(), state)
    x = torch.randn(2, 1, 16, 16)
    assert diff_augment(x, None) is x
    with pytest.raises(ValueError, match="unknown augmentation"):
        draw_augment(["rotation"], 6, 16, g, CPU)
    # the order the policy is written in does not change the draws
    a, b = draws(["cutout", "translation"]), draws(["translation", "cutout"])
    assert torch.equal(a.shift, b.shift) and torch.equal(a.cutout, b.cutout)
