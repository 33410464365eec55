"""The joint histogram of (ground-truth id, predicted id) over the pixels of one image.

Everything panoptic quality and mIoU need from the pixels is this table: for each pair of ids
that overlap, how many pixels they share. panopticapi gets it from ``np.unique`` on the packed
key ``gt * 2**24 + pred`` of every pixel, which sorts all H*W keys. Here consecutive pixels
(in row-major order) with the same pair are first collapsed into runs, so the sort sees a few
thousand run keys instead of half a million pixel keys; the counts are identical.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

_thread_scratch = threading.local()


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two bool buffers of n and n - 1 entries, kept per thread and reused across images.

    Fresh multi-megabyte arrays cost page faults on every image (measured: more than the
    comparisons that fill them), so the per-pixel temporaries are allocated once.
    """
    buffers = getattr(_thread_scratch, "buffers", None)
    if buffers is None or buffers[0].size != n:
        buffers = (np.empty(n, dtype=bool), np.empty(max(n - 1, 0), dtype=bool))
        _thread_scratch.buffers = buffers
    return buffers


@dataclass(frozen=True)
class PairHistogram:
    """Pixel counts of overlapping id pairs, sorted by ``(gt_id, pred_id)``.

    Attributes:
        gt_ids: int64 [K], ground-truth segment ids (0 = VOID).
        pred_ids: int64 [K], predicted segment ids (0 = VOID).
        counts: int64 [K], pixels where both ids occur together; all > 0.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    counts: np.ndarray


def pair_histogram(gt_map: np.ndarray, pred_map: np.ndarray) -> PairHistogram:
    """Count the pixels of every (gt id, pred id) pair.

    Args:
        gt_map: integer array [H, W] of ground-truth ids, values in ``0 .. 2**32 - 1``.
        pred_map: integer array [H, W] of predicted ids, same shape and range.

    Returns:
        The :class:`PairHistogram`, in increasing ``(gt_id, pred_id)`` order (the order in
        which panopticapi visits the pairs).

    Raises:
        ValueError: shapes differ or an id is negative (callers turn this into an InputError
            with the file and image named).
    """
    if gt_map.shape != pred_map.shape:
        raise ValueError(f"shapes differ: ground truth {tuple(gt_map.shape)}, prediction {tuple(pred_map.shape)}")
    gt = np.ascontiguousarray(gt_map).reshape(-1)
    pred = np.ascontiguousarray(pred_map).reshape(-1)
    n = gt.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return PairHistogram(empty, empty, empty)

    # A run starts wherever the gt id or the pred id changes from the previous pixel.
    starts_run, pred_changes = _scratch(n)
    starts_run[0] = True
    np.not_equal(gt[1:], gt[:-1], out=starts_run[1:])
    np.not_equal(pred[1:], pred[:-1], out=pred_changes)
    np.logical_or(starts_run[1:], pred_changes, out=starts_run[1:])
    starts = np.flatnonzero(starts_run)
    lengths = np.diff(starts, append=n)
    run_gt = gt[starts].astype(np.int64)
    run_pred = pred[starts].astype(np.int64)
    if run_gt.min() < 0 or run_pred.min() < 0:
        raise ValueError("segment ids must be >= 0")

    keys = (run_gt.astype(np.uint64) << np.uint64(32)) | run_pred.astype(np.uint64)
    # The runs of one image repeat the same few pairs in near-sorted order, which the stable
    # (merge/radix) sort handles several times faster than the default quicksort.
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    counts = np.add.reduceat(lengths[order], first)
    keys = keys[first]
    return PairHistogram(
        gt_ids=(keys >> np.uint64(32)).astype(np.int64),
        pred_ids=(keys & np.uint64(0xFFFFFFFF)).astype(np.int64),
        counts=counts.astype(np.int64),
    )
