"""The built-in dataset: overlapping shapes on textured stuff, with occlusions known exactly.

Each image is a scene of large *stuff* regions (sky, grass, water, wall, sand: a warped
Voronoi partition, each class with its own texture and per-image jittered colours) and
*things* in front of them (circle, square, triangle, star, ring, hexagon of random size,
rotation, colour and texture). Things are painted back to front, so where they overlap the
front one is visible; their full (*amodal*) masks and depth order are kept, so the exact
occlusion graph of every image is known. Crowd clumps (several small things of one class
labelled as one ``iscrowd`` segment) and VOID pixels (a border band, noise blobs) exercise
the remaining rules of panoptic evaluation.

The package has three parts, one job each:

* :mod:`.scene`: one image in memory (:func:`generate_sample`), the categories and the knobs;
* :mod:`.writing`: a COCO panoptic split plus ``instances.json`` (amodal masks as RLE, depth,
  link to the visible segment) on disk (:func:`generate_split`);
* :mod:`.reading`: a written split's instances and occlusion pairs read back.

Everything is deterministic for a seed, whatever the number of worker processes: image
``index`` draws from its own ``np.random.SeedSequence([seed, index])``. See docs/synthetic.md
for the files, their fields and the invariants.
"""


from panopticlab.data.synthetic.reading import count_occlusion_pairs, iter_split_instances, occlusion_pairs
from panopticlab.data.synthetic.scene import (
    GENERATOR_VERSION,
    SHAPES_CATEGORIES,
    STUFF_IDS,
    THING_IDS,
    ShapeInstance,
    ShapesConfig,
    ShapesSample,
    generate_sample,
)
from panopticlab.data.synthetic.writing import generate_split

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES_CATEGORIES",
    "STUFF_IDS",
    "THING_IDS",
    "ShapeInstance",
    "ShapesConfig",
    "ShapesSample",
    "count_occlusion_pairs",
    "generate_sample",
    "generate_split",
    "iter_split_instances",
    "occlusion_pairs",
]
