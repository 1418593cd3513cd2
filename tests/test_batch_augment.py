"""The batched crop and flip: each output is a window of the padded image, mirrored or not,
at offsets drawn uniformly, the same as kornia's on a CPU, and gradients reach the images."""

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uebench.batch_augment import BatchCropFlip
from uebench.training import standard_augmentation


def placements(images: torch.Tensor, out: torch.Tensor, pad: int, mode: str) -> list[tuple]:
    """For each output image, every (top, left, mirrored) window of its padded input it equals."""
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    side = images.shape[-1]
    found = []
    for source, result in zip(padded, out, strict=True):
        found.append(
            [
                (top, left, mirrored)
                for top in range(2 * pad + 1)
                for left in range(2 * pad + 1)
                for mirrored in (False, True)
                if torch.equal(
                    source[:, top : top + side, left : left + side].flip(-1)
                    if mirrored
                    else source[:, top : top + side, left : left + side],
                    result,
                )
            ]
        )
    return found


@pytest.mark.parametrize(("pad_mode", "mode"), [("zeros", "constant"), ("reflect", "reflect")])
def test_each_image_is_a_window_of_its_padded_self(pad_mode, mode):
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    out = BatchCropFlip(2, flip=True, pad_mode=pad_mode)(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    found = placements(images, out, 2, mode)
    assert all(len(windows) == 1 for windows in found)  # random pixels: one window each
    tops = {windows[0][0] for windows in found}
    lefts = {windows[0][1] for windows in found}
    mirrored = sum(windows[0][2] for windows in found)
    assert tops == lefts == set(range(5)) and 16 < mirrored < 48


def test_offsets_and_flips_are_uniform():
    torch.manual_seed(1)
    count, pad = 9000, 1
    # Each image a ramp: two inner pixels of the output (never padding) tell the offset and
    # the flip apart.
    images = torch.arange(16.0).view(1, 1, 4, 4).repeat(count, 1, 1, 1) + 1
    out = BatchCropFlip(pad, flip=True)(images)
    corners = torch.stack([out[:, 0, 1, 1], out[:, 0, 1, 2]], dim=1)
    _, frequency = corners.unique(dim=0, return_counts=True)
    # 3 × 3 offsets × 2 orientations, 500 each expected; 6 standard deviations apart.
    assert len(frequency) == 18
    assert (frequency - 500).abs().max() < 6 * (500 * 17 / 18) ** 0.5


def test_without_padding_only_the_flip_acts():
    torch.manual_seed(2)
    images = torch.rand(32, 1, 5, 5)
    out = BatchCropFlip(0, flip=True)(images)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all()) and 0 < int(mirrored.sum()) < 32


def test_without_the_flip_no_image_is_mirrored():
    torch.manual_seed(3)
    images = torch.rand(64, 3, 8, 8)
    found = placements(images, BatchCropFlip(2, flip=False)(images), 2, "constant")
    assert all(windows == [(windows[0][0], windows[0][1], False)] for windows in found)


def test_gradients_reach_every_pixel_the_crop_keeps():
    torch.manual_seed(4)
    images = torch.rand(16, 3, 8, 8, requires_grad=True)
    out = BatchCropFlip(2, flip=True)(images)
    out.sum().backward()
    # Each kept pixel of an image gets gradient 1; a zero-padded border none.
    kept = (out.detach() != 0).flatten(1).sum(1)
    assert torch.equal(images.grad.flatten(1).sum(1), kept.float())
    assert set(images.grad.unique().tolist()) <= {0.0, 1.0}


def test_standard_augmentation_is_the_batched_crop_and_flip():
    augment = standard_augmentation(32, None, True, "reflect")
    assert isinstance(augment, BatchCropFlip)
    assert (augment.padding, augment.flip, augment.mode) == (4, True, "reflect")
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(standard_augmentation(32, 0, False)(images), images)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="negative"):
        BatchCropFlip(-1, flip=True)
    with pytest.raises(ValueError, match="pad_mode"):
        BatchCropFlip(2, flip=True, pad_mode="wrap")


@pytest.mark.parametrize(
    ("padding", "flip", "pad_mode"),
    [(4, True, "zeros"), (2, False, "reflect"), (0, True, "zeros"), (2, True, "reflect")],
)
def test_on_a_cpu_the_crops_and_flips_are_kornias_to_the_pixel(padding, flip, pad_mode):
    """Same seed, same images out as kornia's RandomCrop + RandomHorizontalFlip, call after
    call, and the global stream left where kornia leaves it: cells and poisons are unchanged."""
    steps = []
    if padding:
        mode = "constant" if pad_mode == "zeros" else pad_mode
        steps.append(K.RandomCrop((16, 16), padding=padding, padding_mode=mode))
    if flip:
        steps.append(K.RandomHorizontalFlip())
    kornia_augment, ours = nn.Sequential(*steps), BatchCropFlip(padding, flip, pad_mode)
    images = torch.rand(37, 3, 16, 16)
    torch.manual_seed(5)
    expected = [kornia_augment(images) for _ in range(3)], torch.rand(4)
    torch.manual_seed(5)
    got = [ours(images) for _ in range(3)], torch.rand(4)
    assert all(torch.equal(a, b) for a, b in zip(expected[0], got[0], strict=True))
    assert torch.equal(expected[1], got[1])
