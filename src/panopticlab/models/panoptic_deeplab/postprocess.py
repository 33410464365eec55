"""Panoptic-DeepLab post-processing: centre heatmap + offsets + semantics -> panoptic segmentation.

The algorithm is detectron2's (D2, ``projects/Panoptic-DeepLab/panoptic_deeplab/post_processing.py``):

1. **Centres**: heatmap values <= ``threshold`` become -1; a value is a centre if it equals
   the max-pool (``nms_kernel``, stride 1, padding ``(nms_kernel - 1) // 2``) around it, so a
   plateau keeps all its equal maxima; with ``top_k`` only values strictly above the
   ``top_k``-th largest (clamped at 0) survive, otherwise all values > 0. Centres are listed
   (y, x) in row-major order.
2. **Grouping**: every foreground ("thing") pixel goes to the centre nearest (L2) to its
   predicted centre ``(y + dy, x + dx)``; instance id = centre index + 1, ties to the lowest index.
3. **Merge**: an instance takes the most frequent semantic class of its pixels (ties to the
   smallest class id) and a per-class number 1, 2, ... in instance-id order, written as
   ``class * label_divisor + number``; a non-thing class becomes ``class * label_divisor`` on
   its pixels outside instances when it covers at least ``stuff_area`` of them; everything
   else (including thing-class pixels outside any instance) is ``void_label``.

What differs from D2 is only how it is computed: grouping visits foreground pixels only, in
chunks, so memory is O(chunk * K) rather than D2's [K, H*W, 2] tensor; the class vote, the
numbering and the stuff areas are ``bincount``s instead of Python loops over instances and
classes. Distances are compared exactly as D2 compares its float32 distances, so ties and
rounding give the same ids (see :func:`nearest_centers`; tested against
the oracle ``tests/oracles/postprocess_reference.py``). Every step is a torch operation: the functions run on the
tensors' device, CPU or GPU.

:func:`get_panoptic_segmentation` is the drop-in for D2's function;
:func:`panoptic_deeplab_inference` is the batched API that returns :class:`PanopticResult`
with segments listed and D2's instance scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from panopticlab.errors import InputError
from panopticlab.structures import PanopticResult, Segment

#: How an instance gets its class (see :func:`panoptic_deeplab_inference`).
ClassVote = Literal["majority", "mean_probability"]

#: Distances computed at once while grouping (centres x pixels): bounds the extra memory
#: (about 10 bytes each). On a GPU, 16 times more: fewer kernel launches, memory is plenty.
GROUPING_CHUNK_ELEMENTS = 1 << 21
#: from this many centres on, pixels are compared with the candidate centres of their tile only
PRUNE_MIN_CENTERS = 24
#: side of the square tiles (pixels of predicted position) that share a candidate list
PRUNE_TILE = 32


def find_instance_centers(
    center_heatmap: Tensor, threshold: float = 0.1, nms_kernel: int = 7, top_k: int | None = 200
) -> Tensor:
    """Instance centres of a raw centre heatmap.

    Args:
        center_heatmap: float [H, W], the raw (not sigmoid) centre heatmap.
        threshold: values <= threshold are never centres.
        nms_kernel: odd max-pool window; a centre is a maximum of its window.
        top_k: keep only centres strictly above the ``top_k``-th largest value (clamped at 0);
            ``None`` keeps every centre > 0.

    Returns:
        int64 [K, 2], (y, x) in row-major order.
    """
    heatmap = F.threshold(center_heatmap, threshold, -1.0)
    # D2's max-pool is separable: a window max along rows, then along columns.
    pooled = _window_max(_window_max(heatmap, nms_kernel, dim=1), nms_kernel, dim=0)
    # D2 sets non-maxima to -1 and then keeps values > max(kth largest, 0): only maxima > 0 matter.
    centers = torch.nonzero((heatmap == pooled) & (heatmap > 0))
    if top_k is not None and centers.shape[0] >= top_k:
        values = heatmap[centers[:, 0], centers[:, 1]]
        kth_largest = torch.topk(values, top_k).values[-1]
        centers = centers[values > kth_largest]
    return centers


def _window_max(x: Tensor, size: int, dim: int) -> Tensor:
    """Centred sliding maximum of odd width ``size`` along ``dim``, outside values ignored.

    Equals ``max_pool`` with stride 1 and padding ``size // 2`` along that axis, with
    log2(size) + 1 elementwise maxima (a sparse table) instead of a pooling kernel.
    """
    pad_shape = list(x.shape)
    pad_shape[dim] = size // 2
    padding = x.new_full(pad_shape, float("-inf"))
    padded = torch.cat((padding, x, padding), dim=dim)
    # running[i] = max(padded[i : i + span]), span doubling up to the largest power of 2 <= size.
    running, span = padded, 1
    while 2 * span <= size:
        length = running.shape[dim] - span
        running = torch.maximum(running.narrow(dim, 0, length), running.narrow(dim, span, length))
        span *= 2
    # The window [i, i + size) is the union of [i, i + span) and [i + size - span, i + size).
    n = x.shape[dim]
    return torch.maximum(running.narrow(dim, 0, n), running.narrow(dim, size - span, n))


def nearest_centers(
    centers: Tensor,
    offsets: Tensor,
    pixels: Tensor,
    chunk_elements: int = GROUPING_CHUNK_ELEMENTS,
    prune_min_centers: int = PRUNE_MIN_CENTERS,
) -> Tensor:
    """Index of the centre nearest to each pixel's predicted centre, exactly as D2 picks it.

    D2 takes ``argmin_k norm(center_k - predicted)`` (first index on ties). On CPU torch
    computes that float32 norm as the correctly rounded square root of
    ``fl(fl(dy*dy) + fl(dx*dx))``, so two centres tie when their squared distances differ
    but round to the same distance. This function reproduces that without a square root per
    centre: it finds the smallest squared distance ``m`` per pixel, the largest ``s_max`` whose
    rounded root equals that of ``m``, and returns the first centre with squared distance
    <= ``s_max``. (float64 offsets compare ``sqrt`` of the squared distances instead.)

    With many centres (at least ``prune_min_centers``) each pixel is compared only with the
    centres that can be nearest to it (:func:`_candidate_centers`); the result is the same.
    Distances are computed ``chunk_elements`` at a time (16 times more on a GPU).

    Args:
        centers: int64 [K, 2] (y, x), K >= 1.
        offsets: float32 or float64 [2, H, W], channels (dy, dx).
        pixels: int64 [N], flat indices (y * W + x) of the pixels to group.

    Returns:
        int64 [N] in ``0 .. K-1``.
    """
    width, dtype = offsets.shape[2], offsets.dtype
    # Predicted centres [N], rounded as D2 rounds ``coordinate + offset``.
    predicted_y = (pixels // width).to(dtype) + offsets[0].flatten()[pixels]
    predicted_x = (pixels % width).to(dtype) + offsets[1].flatten()[pixels]
    center_y, center_x = centers[:, 0].to(dtype), centers[:, 1].to(dtype)
    if centers.shape[0] < prune_min_centers:
        return _first_nearest(center_y[:, None], center_x[:, None], predicted_y, predicted_x, chunk_elements)
    nearest = torch.zeros_like(pixels)
    # Far-off or non-finite predictions (their squares may overflow) go through all centres.
    ordinary = (predicted_y.abs() < 1e6) & (predicted_x.abs() < 1e6)
    unusual = torch.nonzero(~ordinary).squeeze(1)
    if unusual.numel():
        nearest[unusual] = _first_nearest(
            center_y[:, None], center_x[:, None], predicted_y[unusual], predicted_x[unusual], chunk_elements
        )
    usual = torch.nonzero(ordinary).squeeze(1)
    if usual.numel():
        height = offsets.shape[1]
        candidates, tile = _candidate_centers(center_y, center_x, predicted_y[usual], predicted_x[usual], height, width)
        # Padding candidates (-1) sit at an infinite distance: never within the limit.
        far = torch.tensor([float("inf")], dtype=dtype, device=centers.device)
        tile_y, tile_x = torch.cat([center_y, far])[candidates], torch.cat([center_x, far])[candidates]  # [T, C]
        usual_y, usual_x = predicted_y[usual], predicted_x[usual]
        width_c = candidates.shape[1]
        chunk = max(1, chunk_elements * (16 if pixels.is_cuda else 1) // width_c)
        for start in range(0, usual.numel(), chunk):
            rows = tile[start : start + chunk]
            # [n, C], a row per position (its tile's candidates): reductions run along memory
            squared = _square_(tile_y.index_select(0, rows).sub_(usual_y[start : start + chunk, None]))
            squared.add_(_square_(tile_x.index_select(0, rows).sub_(usual_x[start : start + chunk, None])))
            if dtype == torch.float64:
                squared.sqrt_()
                limit = squared.amin(dim=1, keepdim=True)
            else:
                limit = _largest_square_with_same_root(squared.amin(dim=1))[:, None]
            # the first candidate within the limit: the lowest centre id (argmax keeps the first maximum)
            local = (squared <= limit).to(torch.uint8).argmax(dim=1)
            nearest[usual[start : start + chunk]] = candidates.view(-1)[rows * width_c + local]
    return nearest


def _first_nearest(
    center_y: Tensor, center_x: Tensor, predicted_y: Tensor, predicted_x: Tensor, chunk_elements: int
) -> Tensor:
    """The first centre (row) nearest to each predicted position (column), with D2's ties.

    Args:
        center_y, center_x: [K, 1], the centres.
        predicted_y, predicted_x: [n].

    Returns:
        int64 [n], row indices; 0 where no centre is finite-near (NaN or infinite predictions), as D2's argmin.
    """
    dtype = predicted_y.dtype
    num_centers = center_y.shape[0]
    # K, K-1, ..., 1 (exact in float32 up to 2**24 centres).
    reversed_index = torch.arange(num_centers, 0, -1, dtype=dtype, device=predicted_y.device).unsqueeze(1)
    nearest = torch.empty(predicted_y.shape, dtype=torch.int64, device=predicted_y.device)
    chunk = max(1, chunk_elements * (16 if predicted_y.is_cuda else 1) // num_centers)
    for start in range(0, predicted_y.numel(), chunk):
        stop = start + chunk
        squared = _square_(center_y - predicted_y[start:stop])  # [K, n], in place from here on
        squared.add_(_square_(center_x - predicted_x[start:stop]))
        if dtype == torch.float64:
            # No wider type to round the root in: compare the rounded roots themselves.
            squared.sqrt_()
            limit = squared.amin(dim=0)
        else:
            limit = _largest_square_with_same_root(squared.amin(dim=0))
        # First centre within the limit = K - max over those centres of (K - index). A NaN or
        # infinite prediction has none (countdown 0) and gets centre 0, like D2's argmin.
        countdown = torch.where(squared <= limit, reversed_index, 0).amax(dim=0).long()
        nearest[start:stop] = torch.where(countdown > 0, num_centers - countdown, 0)
    return nearest


def _square_(t: Tensor) -> Tensor:
    """``t * t`` in place (a fresh difference tensor, freed after the caller's next step)."""
    return t.mul_(t)


def _candidate_centers(
    center_y: Tensor,
    center_x: Tensor,
    predicted_y: Tensor,
    predicted_x: Tensor,
    height: int,
    width: int,
    tile_size: int = PRUNE_TILE,
) -> tuple[Tensor, Tensor]:
    """For tiles of predicted positions, the centres that can be nearest to a position in the tile.

    Positions are binned by ``tile_size``-pixel tiles of their predicted (y, x) over the
    image (positions beyond it go to a border tile); each tile's box is the bounding box of its
    positions. Every position of a box lies within ``U = min_k (farthest distance from centre k
    to the box)`` of some centre, so a centre whose nearest distance to the box exceeds U can never
    be the nearest, nor tie with it (the bound is taken in float64 with a margin far above float32
    rounding, so the candidate lists are supersets of what is needed).

    Returns:
        the candidate lists int64 [T, C] (ascending centre ids, padded with -1; C the longest
        list, rows of empty tiles all -1) and each position's tile int64 [n] (a row of the lists).
    """
    y, x = predicted_y.double(), predicted_x.double()
    rows, cols = -(-height // tile_size) + 2, -(-width // tile_size) + 2  # a border tile on each side
    tile_y = (torch.div(y, tile_size, rounding_mode="floor") + 1).clamp(0, rows - 1).long()
    tile_x = (torch.div(x, tile_size, rounding_mode="floor") + 1).clamp(0, cols - 1).long()
    tile = tile_y * cols + tile_x
    count = rows * cols

    low = torch.full((count,), float("inf"), dtype=y.dtype, device=y.device)
    high = torch.full((count,), float("-inf"), dtype=y.dtype, device=y.device)
    y0, x0 = low.scatter_reduce(0, tile, y, "amin"), low.scatter_reduce(0, tile, x, "amin")
    y1, x1 = high.scatter_reduce(0, tile, y, "amax"), high.scatter_reduce(0, tile, x, "amax")
    occupied = (y0 <= y1)[:, None]
    y0, y1 = torch.where(occupied[:, 0], y0, 0.0), torch.where(occupied[:, 0], y1, 0.0)
    x0, x1 = torch.where(occupied[:, 0], x0, 0.0), torch.where(occupied[:, 0], x1, 0.0)
    cy, cx = center_y.double()[None, :], center_x.double()[None, :]  # [1, K]
    gap_y = torch.clamp(torch.maximum(y0[:, None] - cy, cy - y1[:, None]), min=0)  # [T, K]
    gap_x = torch.clamp(torch.maximum(x0[:, None] - cx, cx - x1[:, None]), min=0)
    nearest_box = gap_y.square() + gap_x.square()
    reach_y = torch.maximum((cy - y0[:, None]).abs(), (cy - y1[:, None]).abs())
    reach_x = torch.maximum((cx - x0[:, None]).abs(), (cx - x1[:, None]).abs())
    bound = (reach_y.square() + reach_x.square()).amin(dim=1, keepdim=True)  # U**2 [T, 1]
    possible = (nearest_box <= bound * (1 + 1e-4) + 1e-2) & occupied  # [T, K]
    longest = max(1, int(possible.sum(dim=1).max()))
    ids = torch.arange(possible.shape[1], device=possible.device).expand_as(possible)
    # candidates first (ascending id), the rest after: sort by (not possible, id)
    order = torch.argsort((~possible).long() * possible.shape[1] + ids, dim=1)[:, :longest]
    candidates = torch.where(possible.gather(1, order), order, -1)
    return candidates, tile


def _largest_square_with_same_root(smallest: Tensor) -> Tensor:
    """Largest s (same dtype) whose correctly rounded sqrt equals that of ``smallest`` [n].

    For float32 [n]. With d = round(sqrt(m)) and mu the midpoint between d and the next
    float, round(sqrt(s)) == d exactly when s < mu**2 (exact in float64, never a float32).
    A square root computed in float64 and rounded is the correctly rounded one.
    NaN stays NaN, so that no centre passes and the first one is returned, as in D2.
    """
    dtype = smallest.dtype
    root = smallest.double().sqrt().to(dtype)
    midpoint = (root.double() + torch.nextafter(root, torch.full_like(root, float("inf"))).double()) / 2
    bound = midpoint * midpoint
    limit = bound.to(dtype)
    return torch.where(limit.double() >= bound, torch.nextafter(limit, torch.full_like(limit, float("-inf"))), limit)


class _Assignment(NamedTuple):
    """Everything the two output formats are built from (one image).

    ``pixels`` are the flat indices of the grouped (foreground) pixels and ``instance`` their
    instance ids 1..K; ``instance_class`` / ``instance_number`` ([K + 1], index 0 unused)
    give each instance its voted class and per-class number (-1 / 0 for an instance without
    pixels); ``stuff_classes`` [C] flags the classes written as stuff.
    """

    centers: Tensor
    pixels: Tensor
    instance: Tensor
    instance_class: Tensor
    instance_number: Tensor
    stuff_classes: Tensor


def _assign(
    sem_seg: Tensor,
    center_heatmap: Tensor,
    offsets: Tensor,
    foreground: Tensor | None,
    thing_ids: list[int],
    stuff_area: int,
    threshold: float,
    nms_kernel: int,
    top_k: int | None,
    vote_logits: Tensor | None = None,
    chunk_elements: int = GROUPING_CHUNK_ELEMENTS,
) -> _Assignment:
    """Centres, grouping, class vote and stuff areas for one image (shapes [H, W], [2, H, W]).

    ``vote_logits`` (float [C, H*W]): vote each instance's class by mean softmax probability
    over its pixels (among the thing classes) instead of detectron2's majority of argmaxes.
    Written in TorchScript's subset of Python (see :mod:`panopticlab.export`).
    """
    device = sem_seg.device
    flat_sem = sem_seg.flatten().long()
    num_classes = 1
    if flat_sem.numel() > 0:
        if int(flat_sem.min()) < 0:
            raise InputError("semantic labels must be non-negative class ids")
        num_classes = int(flat_sem.max()) + 1
    if vote_logits is not None:
        num_classes = max(num_classes, vote_logits.shape[0])
    is_thing_class = torch.zeros(num_classes, dtype=torch.bool, device=device)
    thing_tensor = torch.tensor(thing_ids, dtype=torch.long)
    thing_tensor = thing_tensor[(thing_tensor >= 0) & (thing_tensor < num_classes)]
    is_thing_class[thing_tensor.to(device)] = True
    if foreground is None:
        is_foreground = is_thing_class[flat_sem]
    else:
        is_foreground = foreground.flatten() > 0

    centers = find_instance_centers(center_heatmap, threshold, nms_kernel, top_k)
    num_centers = centers.shape[0]
    if offsets.dtype not in (torch.float32, torch.float64):
        offsets = offsets.float()  # half-precision coordinates would be off by pixels
    if num_centers == 0:
        # D2: without centres nothing is grouped, foreground pixels included.
        pixels = torch.zeros(0, dtype=torch.long, device=device)
    else:
        pixels = torch.nonzero(is_foreground).squeeze(1)
    instance = pixels
    if pixels.numel() > 0:
        instance = nearest_centers(centers, offsets, pixels, chunk_elements) + 1

    # Majority vote for all instances at once: votes[k, c] = pixels of class c in instance k.
    votes = torch.bincount(instance * num_classes + flat_sem[pixels], minlength=(num_centers + 1) * num_classes)
    votes = votes.view(num_centers + 1, num_classes)
    has_pixels = votes.sum(dim=1) > 0
    if vote_logits is None:
        # argmax returns the first maximum: ties go to the smallest class id, as torch.mode does.
        voted = votes.argmax(dim=1)
    else:
        voted = _mean_probability_vote(vote_logits, pixels, instance, num_centers + 1, is_thing_class, chunk_elements)
    instance_class = torch.where(has_pixels, voted, -1)
    # Per-class number 1, 2, ... in instance-id order.
    one_hot = F.one_hot(instance_class.clamp(min=0), num_classes) * has_pixels.unsqueeze(1)
    instance_number = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1)

    # Stuff areas count the pixels outside instances: all pixels minus the grouped ones.
    stuff_area_of_class = torch.bincount(flat_sem, minlength=num_classes) - votes.sum(dim=0)
    stuff_classes = (stuff_area_of_class >= stuff_area) & (stuff_area_of_class > 0) & ~is_thing_class
    return _Assignment(centers, pixels, instance, instance_class, instance_number, stuff_classes)


def _mean_probability_vote(
    flat_logits: Tensor,
    pixels: Tensor,
    instance: Tensor,
    num_instances: int,
    is_thing_class: Tensor,
    chunk_elements: int,
) -> Tensor:
    """Per instance id (0..num_instances-1), the thing class of the highest softmax probability
    summed over its ``pixels`` (ids ``instance``); int64 [num_instances]. Softmax in chunks of
    pixels, sums in float64."""
    num_classes = flat_logits.shape[0]
    totals = torch.zeros(num_instances, num_classes, dtype=torch.float64, device=flat_logits.device)
    chunk = max(1, chunk_elements // num_classes)
    for start in range(0, pixels.numel(), chunk):
        probability = torch.softmax(flat_logits[:, pixels[start : start + chunk]].float(), dim=0)
        totals.index_add_(0, instance[start : start + chunk], probability.T.double())
    thing = is_thing_class[:num_classes]
    return totals.masked_fill(~thing, float("-inf")).argmax(dim=1)


def _check_image(sem_seg: Tensor, center_heatmap: Tensor, offsets: Tensor, nms_kernel: int, top_k: int | None) -> None:
    """InputError unless sem_seg [H, W] integer, center_heatmap [H, W], offsets [2, H, W]."""
    if sem_seg.dim() != 2 or sem_seg.dtype.is_floating_point or sem_seg.dtype == torch.bool:
        raise InputError(f"semantic labels must be an integer map [1, H, W], got {sem_seg.dtype} {tuple(sem_seg.shape)}")
    size = tuple(sem_seg.shape)
    if tuple(center_heatmap.shape) != size:
        raise InputError(f"center heatmap must be [1, H, W] = [1, {size[0]}, {size[1]}], got {tuple(center_heatmap.shape)}")
    if tuple(offsets.shape) != (2, *size):
        raise InputError(f"offsets must be [2, H, W] = [2, {size[0]}, {size[1]}], got {tuple(offsets.shape)}")
    _check_settings(nms_kernel, top_k)


def _check_settings(nms_kernel: int, top_k: int | None) -> None:
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise InputError(f"nms_kernel must be an odd positive integer, got {nms_kernel}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be None or >= 1, got {top_k}")


def get_panoptic_segmentation(
    sem_seg: Tensor,
    center_heatmap: Tensor,
    offsets: Tensor,
    thing_ids: Iterable[int],
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int | None = 200,
    foreground_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Drop-in for detectron2's ``get_panoptic_segmentation`` (same arguments, same outputs).

    Args:
        sem_seg: integer [1, H, W], semantic class per pixel (contiguous ids, >= 0).
        center_heatmap: float [1, H, W], raw centre heatmap.
        offsets: float [2, H, W], (dy, dx) from each pixel to its centre.
        thing_ids: contiguous class ids of thing classes.
        label_divisor: panoptic label = class * label_divisor + instance number.
        stuff_area: a stuff class needs at least this many pixels (outside instances).
        void_label: label of pixels that are neither an instance nor kept stuff.
        threshold, nms_kernel, top_k: centre finding, see :func:`find_instance_centers`.
        foreground_mask: optional [1, H, W]; pixels > 0 are grouped into instances. By
            default, the pixels whose semantic class is in ``thing_ids``.

    Returns:
        ``(panoptic, centers)``: int64 [1, H, W] labels and int64 [1, K, 2] centres (y, x).
    """
    for name, tensor in (("sem_seg", sem_seg), ("center_heatmap", center_heatmap), ("foreground_mask", foreground_mask)):
        if tensor is not None and (tensor.dim() != 3 or tensor.shape[0] != 1):
            raise InputError(f"{name} must be [1, H, W], got {tuple(tensor.shape)}")
    if foreground_mask is not None and foreground_mask.shape != sem_seg.shape:
        raise InputError(f"foreground_mask must be {tuple(sem_seg.shape)} like sem_seg, got {tuple(foreground_mask.shape)}")
    _check_image(sem_seg[0], center_heatmap[0], offsets, nms_kernel, top_k)
    foreground = None if foreground_mask is None else foreground_mask[0]
    thing_list = [int(t) for t in thing_ids]
    a = _assign(sem_seg[0], center_heatmap[0], offsets, foreground, thing_list, stuff_area, threshold, nms_kernel, top_k)

    class_ids = torch.arange(a.stuff_classes.numel(), device=sem_seg.device)
    stuff_label = torch.where(a.stuff_classes, class_ids * label_divisor, void_label)
    thing_label = a.instance_class * label_divisor + a.instance_number
    panoptic = stuff_label[sem_seg.flatten().long()]
    panoptic[a.pixels] = thing_label[a.instance]
    return panoptic.view_as(sem_seg), a.centers.unsqueeze(0)


def panoptic_deeplab_inference(
    sem_logits: Tensor,
    center_heatmap: Tensor,
    offsets: Tensor,
    *,
    thing_ids: Iterable[int],
    stuff_area: int = 2048,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int | None = 200,
    category_ids: Sequence[int] | None = None,
    class_vote: ClassVote = "majority",
) -> list[PanopticResult]:
    """Batched post-processing into :class:`PanopticResult`\\ s with their segments listed.

    The panoptic segmentation is D2's (see :func:`get_panoptic_segmentation`, semantic class =
    argmax of the logits). Segment ids are 1, 2, ...: first the instances in centre order, then
    the stuff classes in class order; ``to_label_map(result, label_divisor=...)`` therefore gives
    back D2's label map when ``category_ids`` is None. Each segment has its area, COCO bbox
    ``[x, y, w, h]`` and ``iscrowd=False``; a thing segment also has D2's instance score
    ``mean softmax probability of its class over its mask x raw heatmap value at the mask's
    pixel centroid (int(mean y), int(mean x))``, the score D2 hands to AP evaluation.

    Args:
        sem_logits: float [B, C, H, W] semantic logits.
        center_heatmap: float [B, 1, H, W] raw centre heatmaps.
        offsets: float [B, 2, H, W] (dy, dx) offsets.
        thing_ids: contiguous ids (0..C-1) of the thing classes.
        stuff_area, threshold, nms_kernel, top_k: as in :func:`get_panoptic_segmentation`.
        category_ids: optional contiguous id -> dataset category id list (length C); segments
            then carry dataset ids.
        class_vote: an instance's class: ``"majority"`` (detectron2: the most frequent argmax
            class of its pixels) or ``"mean_probability"`` (the thing class of the highest mean
            softmax probability over its pixels; the grouping is the same).

    Returns:
        One :class:`PanopticResult` per image.
    """
    if sem_logits.dim() != 4:
        raise InputError(f"sem_logits must be [B, C, H, W], got {tuple(sem_logits.shape)}")
    batch, num_classes, height, width = sem_logits.shape
    if tuple(center_heatmap.shape) != (batch, 1, height, width):
        raise InputError(f"center_heatmap must be [{batch}, 1, {height}, {width}], got {tuple(center_heatmap.shape)}")
    if tuple(offsets.shape) != (batch, 2, height, width):
        raise InputError(f"offsets must be [{batch}, 2, {height}, {width}], got {tuple(offsets.shape)}")
    if class_vote not in ("majority", "mean_probability"):
        raise InputError(f"class_vote must be 'majority' or 'mean_probability', got {class_vote!r}")
    if category_ids is not None and len(category_ids) != num_classes:
        raise InputError(f"category_ids must list {num_classes} dataset ids (one per class), got {len(category_ids)}")
    _check_settings(nms_kernel, top_k)
    thing_ids = [int(t) for t in thing_ids]  # read once for all images
    results = []
    for logits, heatmap, offset in zip(sem_logits, center_heatmap, offsets, strict=True):
        table = image_segment_table(
            logits, heatmap[0], offset, thing_ids, stuff_area, threshold, nms_kernel, top_k, class_vote == "mean_probability"
        )
        results.append(_to_result(table, category_ids))
    return results


def image_segment_table(
    logits: Tensor,
    center_heatmap: Tensor,
    offsets: Tensor,
    thing_ids: list[int],
    stuff_area: int,
    threshold: float,
    nms_kernel: int,
    top_k: int | None,
    mean_probability_vote: bool,
) -> SegmentTable:
    """One image's post-processing (:func:`panoptic_deeplab_inference`'s) as a :class:`SegmentTable`.

    Args:
        logits: float [C, H, W] semantic logits; center_heatmap float [H, W]; offsets float [2, H, W].
        mean_probability_vote: the ``"mean_probability"`` class vote instead of the majority.

    TorchScript-compatible: the TorchScript export calls it as is.
    """
    sem_seg = logits.argmax(dim=0)
    vote_logits: Tensor | None = None
    if mean_probability_vote:
        vote_logits = logits.flatten(1)
    a = _assign(sem_seg, center_heatmap, offsets, None, thing_ids, stuff_area, threshold, nms_kernel, top_k, vote_logits)
    return segment_table(a, sem_seg, logits, center_heatmap)


class SegmentTable(NamedTuple):
    """One image's panoptic segmentation as tensors (what the TorchScript export returns, too).

    ``id_map`` int64 [H, W] holds segment ids 1..S (0: VOID); row ``s`` of ``stats`` int64
    [S + 1, 6] is segment s's (contiguous class, area, x, y, w, h) with its COCO bbox, and
    ``score`` float64 [S + 1] its instance score (row 0 unused); segments 1..``num_instances``
    are the things.
    """

    id_map: Tensor
    stats: Tensor
    score: Tensor
    num_instances: int


def segment_table(
    a: _Assignment, sem_seg: Tensor, logits: Tensor, heatmap: Tensor, chunk_elements: int = GROUPING_CHUNK_ELEMENTS
) -> SegmentTable:
    """Segment-id map, segment statistics and instance scores of one image (TorchScript-compatible).

    Instances are voted among thing-class pixels only, so every instance is a thing segment.
    """
    height, width = sem_seg.shape[0], sem_seg.shape[1]
    device = sem_seg.device
    # Segment ids: instances with pixels first (in id order), then kept stuff classes.
    instance_has_pixels = a.instance_class >= 0
    num_instances = int(instance_has_pixels.sum())
    segment_of_instance = torch.where(instance_has_pixels, instance_has_pixels.cumsum(0), 0)
    segment_of_class = torch.where(a.stuff_classes, a.stuff_classes.cumsum(0) + num_instances, 0)
    num_segments = num_instances + int(a.stuff_classes.sum())

    id_map = segment_of_class[sem_seg.flatten()]
    thing_segment = segment_of_instance[a.instance]
    id_map[a.pixels] = thing_segment

    area = torch.bincount(id_map, minlength=num_segments + 1)
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    init = torch.zeros(num_segments + 1, dtype=torch.long, device=device)
    x0 = init.scatter_reduce(0, id_map, xs, "amin", include_self=False)
    y0 = init.scatter_reduce(0, id_map, ys, "amin", include_self=False)
    x1 = init.scatter_reduce(0, id_map, xs, "amax", include_self=False)
    y1 = init.scatter_reduce(0, id_map, ys, "amax", include_self=False)

    # Scores of thing segments: mean probability of the instance's class over the mask ...
    segment_class = torch.full((num_segments + 1,), -1, dtype=torch.long, device=device)
    segment_class[segment_of_instance[instance_has_pixels]] = a.instance_class[instance_has_pixels]
    segment_class[segment_of_class[a.stuff_classes]] = torch.nonzero(a.stuff_classes).squeeze(1)
    probability = _class_probability(logits.flatten(1), a.pixels, segment_class[thing_segment], chunk_elements)
    mean_probability = torch.bincount(thing_segment, probability, minlength=num_segments + 1) / area.clamp(min=1)
    # ... times the heatmap at the pixel centroid, computed exactly (integer sums).
    sum_y = torch.bincount(thing_segment, weights=ys[a.pixels].double(), minlength=num_segments + 1)
    sum_x = torch.bincount(thing_segment, weights=xs[a.pixels].double(), minlength=num_segments + 1)
    cy = torch.div(sum_y.long(), area.clamp(min=1), rounding_mode="floor")
    cx = torch.div(sum_x.long(), area.clamp(min=1), rounding_mode="floor")
    score = mean_probability * heatmap[cy, cx].double()
    stats = torch.stack((segment_class, area, x0, y0, x1 - x0 + 1, y1 - y0 + 1), dim=1)
    return SegmentTable(id_map.view(height, width), stats, score, num_instances)


def _to_result(table: SegmentTable, category_ids: Sequence[int] | None) -> PanopticResult:
    """A :class:`PanopticResult` of a segment table, with dataset category ids when given."""
    stats, scores = table.stats.tolist(), table.score.tolist()
    segments = []
    for segment_id in range(1, len(stats)):
        cls, seg_area, x, y, w, h = stats[segment_id]
        isthing = segment_id <= table.num_instances
        segments.append(
            Segment(
                id=segment_id,
                category_id=cls if category_ids is None else int(category_ids[cls]),
                isthing=isthing,
                area=seg_area,
                bbox=[x, y, w, h],
                iscrowd=False,
                score=scores[segment_id] if isthing else None,
            )
        )
    return PanopticResult(table.id_map.to(torch.int32).cpu().numpy(), segments)


def _class_probability(flat_logits: Tensor, pixels: Tensor, classes: Tensor, chunk_elements: int) -> Tensor:
    """softmax(flat_logits [C, H*W])[classes[i], pixels[i]] as float64 [N], in chunks of pixels."""
    probability = torch.empty(pixels.numel(), dtype=torch.float64, device=pixels.device)
    chunk = max(1, chunk_elements // flat_logits.shape[0])
    for start in range(0, pixels.numel(), chunk):
        stop = start + chunk
        softmax = torch.softmax(flat_logits[:, pixels[start:stop]], dim=0)
        probability[start:stop] = softmax.gather(0, classes[start:stop].unsqueeze(0))[0].double()
    return probability
