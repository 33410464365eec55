"""What every model family shares: input images, padding, constants, and the inference context.

* :func:`as_image_tensors`: whatever a user hands to ``predict`` -> float [3, H, W] RGB 0..255;
* :func:`pad_images`: a batch of images of different sizes, padded with the mean colour;
* :data:`IGNORE_LABEL`, :data:`PIXEL_MEAN`, :data:`PIXEL_STD`: the semantic "ignore" label of
  targets and losses, and ImageNet's RGB statistics in 0..255 (detectron2's ``PIXEL_MEAN`` /
  ``PIXEL_STD`` and torchvision's normalisation, the same numbers);
* :func:`inference_mode`: eval mode and no autograd for the length of a ``predict``, the
  module's own mode restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from panopticlab.data.dataset import read_image
from panopticlab.data.transforms import PAD_COLOR

#: Semantic label of pixels that carry no loss (VOID, padding; crowd where a recipe says so).
IGNORE_LABEL = 255
#: ImageNet's RGB mean and standard deviation, for images in 0..255.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

#: One image as ``predict`` takes it: a path, a PIL image, uint8 numpy [H, W, 3], a tensor [3, H, W].
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def as_image_tensors(images: ImageInput | Sequence[ImageInput]) -> list[torch.Tensor]:
    """Whatever a user hands to ``predict`` -> a list of float [3, H, W] RGB 0..255 tensors.

    Accepts one :data:`ImageInput`, a batch tensor [B, 3, H, W], or a list of inputs.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [im.float() for im in images]
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    tensors = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an RGB array [H, W, 3], got shape {image.shape}")
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB tensor [3, H, W], got shape {tuple(image.shape)}")
        tensors.append(image.float())
    return tensors


def pad_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack uint8/float images [3, H, W] into float [B, 3, Hmax, Wmax], padding bottom/right
    with the data's pad colour (the mean colour, about zero after normalisation), as the
    training crops are padded."""
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    batch = torch.tensor(PAD_COLOR, dtype=torch.float32).view(1, 3, 1, 1).repeat(len(images), 1, h, w)
    for k, im in enumerate(images):
        batch[k, :, : im.shape[-2], : im.shape[-1]] = im
    return batch


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode without autograd inside the block; its training mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
