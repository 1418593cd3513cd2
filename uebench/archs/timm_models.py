"""Any timm model as a victim or a crafting source: the architecture spec ``timm:NAME``.

``timm:vit_tiny_patch16_224:img_size=32:patch_size=4`` builds timm's ViT-Tiny for 32×32 images
with 4×4 patches; every option other than ``name`` goes to ``timm.create_model`` as written
(typed by its spelling: ``32`` an int, ``0.1`` a float, ``true`` a bool).  timm is an optional
extra (``pip install "uebench[timm]"``), imported only when such a model is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from uebench.errors import UebenchError, one_line

#: How to install the extra, for the error a missing timm gives.
INSTALL_HINT = 'pip install "uebench[timm]"'


class Normalized(nn.Module):
    """A timm model behind the per-channel standardization it was designed for.

    uebench hands every architecture float images in [0, 1]; timm models expect them
    standardized by their configuration's mean and std (ImageNet's for most), which matters for
    pretrained weights and helps training from scratch.  The statistics are buffers, so they
    travel with the model's ``state_dict``.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def timm_model(
    num_classes: int, in_shape: tuple[int, int, int], *, name: str, **options: Any
) -> nn.Module:
    """timm models (extra [timm]), e.g. timm:vit_tiny_patch16_224:img_size=32:patch_size=4.

    ``timm:NAME[:option=value...]`` builds any model of ``timm.list_models()``.

    The options are ``timm.create_model``'s (``img_size``, ``patch_size``, ``drop_rate``,
    ``embed_dim``, ...); ``num_classes`` and ``in_chans`` come from the data, and
    ``pretrained`` defaults to false (no download).  The model is checked on one image of the
    data's shape when built, so a ViT left at 224×224 fails here in one line, not mid-grid.
    """
    try:
        import timm
    except ImportError:
        raise UebenchError(f"timm:{name} needs the timm extra: {INSTALL_HINT}") from None
    if not name:
        raise UebenchError("timm needs a model name: timm:NAME, e.g. timm:resnet18")
    if not timm.is_model(name):
        raise UebenchError(
            f"timm has no model {name!r}; timm.list_models('*vit*') lists names "
            f"(timm {timm.__version__})"
        )
    for reserved in ("num_classes", "in_chans"):
        if reserved in options:
            raise UebenchError(f"timm:{name}: {reserved} comes from the dataset; drop it")
    options.setdefault("pretrained", False)
    try:
        model = timm.create_model(name, num_classes=num_classes, in_chans=in_shape[0], **options)
    except Exception as error:  # timm raises many kinds for options a model does not take
        message = one_line(error)
        raise UebenchError(f"timm could not build {name!r} with {options}: {message}") from None
    config = getattr(model, "pretrained_cfg", None) or {}
    channels = in_shape[0]
    mean = tuple(config.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(config.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != channels:  # a grayscale dataset: one channel's statistics, averaged
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    wrapped = Normalized(model, mean, std)
    _check_input(wrapped, name, in_shape)
    return wrapped


def _check_input(model: nn.Module, name: str, in_shape: tuple[int, int, int]) -> None:
    """One forward pass on a blank image, so an input size the model refuses is one line."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    except Exception as error:
        message = one_line(error)
        size = f"{in_shape[1]}×{in_shape[2]}"
        raise UebenchError(
            f"timm:{name} does not take {size} images ({message}); ViTs need "
            f"img_size={in_shape[1]} and a patch_size dividing it, e.g. patch_size=4"
        ) from None
    finally:
        model.train()
