"""The one exception type for mistakes in what a user hands us.

A missing file, a malformed JSON, an id in a PNG that its ``segments_info`` does not list,
a wrong image size: each raises :class:`InputError` with a message that names the file
(and, where it applies, the image and the segment) and the problem. The CLI prints the
message on one line and exits with status 2. Bugs in panopticlab itself raise anything else.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names the file and the problem."""
