"""Datasets and data loaders from a config, for training and for evaluation.

Training reads an endless, reproducible stream of samples:

* :class:`InfiniteSampler` shuffles the dataset once per epoch with a generator seeded by
  ``(seed, epoch)`` and deals the stream out to the processes (process ``r`` of ``n`` takes
  positions ``r, r + n, r + 2n, ...``). Its state is one number, the count of samples a
  process has taken, so a resumed run starts exactly where the interrupted one stopped.
* :class:`TrainingSet` augments each sample with Python's ``random`` seeded by the sample's
  position in the stream (the previous state restored afterwards), so a sample's crop and
  flip do not depend on which worker process draws it, on the number of workers, or on a
  restart. It then applies the model's own picklable ``data_transform`` (which makes the
  model's ``targets``), so that work happens in the loader's worker processes.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from panopticlab.config import Config, SplitConfig
from panopticlab.data.coco_panoptic import Categories
from panopticlab.data.dataset import CocoPanopticDataset, Item, collate_panoptic
from panopticlab.data.transforms import training_transforms
from panopticlab.errors import InputError

Transform = Callable[[Item], Item]


def build_dataset(config: Config, split: Literal["train", "test"], *, instances: bool = True) -> CocoPanopticDataset:
    """The ``data.train`` or ``data.test`` split of a config, without augmentation.

    ``instances``: also read the split's instance annotations when it has them (``instances.json``
    of a split folder, or ``instances_json``); a model that never uses them passes False, so they
    are neither decoded nor augmented.
    """
    root = Path(config.data.root)
    s: SplitConfig = getattr(config.data, split)
    if s.folder:
        return CocoPanopticDataset.from_split_folder(root / s.folder, instances=instances)
    if not s.is_set:
        raise InputError(
            f"data.{split} is not configured: set data.{split}.folder, or data.{split}.image_folder, "
            f"data.{split}.panoptic_json and data.{split}.panoptic_folder"
        )
    return CocoPanopticDataset(
        root / s.image_folder,
        root / s.panoptic_json,
        root / s.panoptic_folder,
        instances_json=root / s.instances_json if s.instances_json and instances else None,
    )


def check_categories(dataset: CocoPanopticDataset, categories: Categories, *, where: str) -> None:
    """A dataset must use the model's categories (same ids, same thing/stuff split)."""
    ours = [(c["id"], bool(c["isthing"])) for c in dataset.categories.to_list()]
    theirs = [(c["id"], bool(c["isthing"])) for c in categories.to_list()]
    if ours != theirs:
        raise InputError(
            f"{where}: the dataset's categories {[i for i, _ in ours]} are not the model's {[i for i, _ in theirs]} "
            "(model.categories)"
        )


class InfiniteSampler(torch.utils.data.Sampler):
    """An endless stream of ``(index, position)`` pairs for one process.

    The global stream concatenates permutations of ``range(size)``, the one of epoch ``e``
    drawn by a generator seeded with ``seed + e`` (``shuffle=False``: the identity).
    Process ``rank`` of ``world_size`` takes global positions ``rank + world_size * k`` for
    ``k = start, start + 1, ...``; ``position`` is that global position.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0, shuffle: bool = True):
        if size < 1:
            raise InputError("the training split has no images")
        self.size, self.seed, self.rank, self.world_size, self.start, self.shuffle = size, seed, rank, world_size, start, shuffle

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start
        epoch, order = -1, []
        while True:
            position = self.rank + self.world_size * k
            if position // self.size != epoch:
                epoch = position // self.size
                order = self._permutation(epoch)
            yield order[position % self.size], position
            k += 1


class TrainingSet(Dataset):
    """``dataset[index]`` augmented reproducibly, then passed through the model's transform.

    Indexed by the ``(index, position)`` pairs of :class:`InfiniteSampler`.
    """

    def __init__(self, dataset: Dataset, augment: Transform | None, model_transform: Transform | None, seed: int):
        self.dataset, self.augment, self.model_transform, self.seed = dataset, augment, model_transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        index, position = key
        item = self.dataset[index]
        if self.augment is not None:
            state = random.getstate()
            random.seed(self.seed * 2**40 + position)
            try:
                item = self.augment(item)
            finally:
                random.setstate(state)
        if self.model_transform is not None:
            item = self.model_transform(item)
        return item


def per_process_batch_size(batch_size: int, world_size: int) -> int:
    if batch_size < world_size or batch_size % world_size:
        raise InputError(f"solver.batch_size={batch_size} must be a multiple of the number of processes ({world_size})")
    return batch_size // world_size


def build_train_loader(
    config: Config,
    dataset: Dataset,
    *,
    model_transform: Transform | None,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """An endless loader of lists of training items (each process gets its share of
    ``solver.batch_size``), starting at iteration ``start_iter`` of the stream."""
    batch = per_process_batch_size(config.solver.batch_size, world_size)
    i = config.input
    augment = training_transforms(tuple(i.crop_size), i.min_scale, i.max_scale, i.flip)
    sampler = InfiniteSampler(len(dataset), seed=config.seed, rank=rank, world_size=world_size, start=start_iter * batch)
    workers = config.data.num_workers
    return DataLoader(
        TrainingSet(dataset, augment, model_transform, config.seed),
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_panoptic,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


class _Shard(Dataset):
    """Every ``world_size``-th image from ``rank`` on (evaluation splits the images, not a stream)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        self.dataset, self.indices = dataset, range(rank, len(dataset), world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Item:
        return self.dataset[self.indices[k]]


def build_test_loader(config: Config, dataset: Dataset, *, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Lists of ``test.batch_size`` un-augmented items; this process's share of the images, in order."""
    workers = min(config.data.num_workers, math.ceil(len(dataset) / max(1, config.test.batch_size)))
    return DataLoader(
        _Shard(dataset, rank, world_size),
        batch_size=config.test.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_panoptic,
    )
