"""What every input part and its pieces answer: the one interface sources.Dataset is built on.

A part is one input (a .npy file, an .npz member, stdin, an image folder or file, a folder of .npy
samples, ...): what it holds, known up front, and picklable pieces that any thread, process or
cluster worker reads by itself. `Dataset` concatenates parts and asks them, never their kind.

A new input format is a part class that answers `Part` (subclass it to take the defaults of the
facts that only some inputs have), a piece class that answers `Piece`, and one line in
`sources.FORMATS`: a (recognizer, opener) pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from normcli.errors import InputError
from normcli.images import ReadOptions
from normcli.layout import Layout


class Piece(Protocol):
    """Samples of one part, in a given order, read by whichever worker runs them: small and picklable."""

    count: int  # how many samples it reads (a field, or a property)

    def read(self) -> np.ndarray:
        """Its samples as one array, (count, *sample shape), in the part's dtype (the block casts)."""

    def value_counts(self) -> np.ndarray | None:
        """How often each value occurs per channel, (channels, 256), counted without decoding to an
        array (8-bit still images); None where it cannot: then the block is read()."""
        return None

    def profiles(self) -> list[bytes | None] | None:
        """Each sample's ICC profile, for image outputs (images); None for samples that are not images."""
        return None


class Part(Protocol):
    """One input: its samples along axis 0, and the pieces that read them."""

    name: str  # the input as given, for messages and reports
    n_samples: int
    sample_shape: tuple  # one sample's shape; None for a dimension that varies (the height of images)
    dtype: np.dtype  # what its pieces read, in native byte order
    ndim: int  # its axes, samples included: what --layout must name
    key: str | None = None  # the array's name inside its file (an .npz key), which an .npz output keeps
    npy_files: bool = False  # each sample is a .npy file of its own (a folder `--ext npy` wrote)
    varied_sizes: bool = False  # its samples may differ in height and width (axes 0 and 1 of a sample)

    def blocks(self, max_bytes: int) -> list[Piece]:
        """Every sample in order, as pieces of about `max_bytes` (at least one sample each), each
        readable as one array (images of one size)."""

    def piece(self, local: Sequence[int]) -> Piece:
        """The samples at `local` indices of this part, in that order (batches, shuffled or not)."""

    def names(self) -> list[str] | None:
        """Each sample's name within the input (an image's relative path, with #frame), which an
        output folder keeps; None where samples are known by their index alone (arrays)."""
        return None

    def locate(self, local: int) -> str | int:
        """The sample at `local` as an error message names it: its name, else its index."""
        names = self.names()
        return local if names is None else names[local]

    def frame_tags(self) -> list[str]:
        """Each sample's `#frame` tag within its file (a frame of a multi-frame image), else ''."""
        return [""] * self.n_samples

    @property
    def alpha_channel(self) -> int | None:
        """The channel that holds alpha (the last), which is passed through unmeasured; None: none."""
        return None

    def image_suffixes(self) -> set[str]:
        """The file types of its images (lower case, with the dot); empty for inputs of no images."""
        return set()

    def check_layout(self, layout_name: str | None) -> None:
        """Refuse (UsageMismatch) a --layout this input cannot be read as."""

    def layout_doubt(self, layout: Layout) -> str | None:
        """A warning where `layout`, taken by default for this many axes, looks wrong for its shape."""
        return None

    def close(self) -> None:
        """Release what reading it holds open in this process."""


@dataclass(frozen=True)
class OpenOptions:
    """What opening an input may need: the .npz `--key`, the image `--mode` and read options."""

    key: str | None = None
    mode: str | None = None
    images: ReadOptions = ReadOptions()


# sources.FORMATS holds (recognizer, opener) pairs, tried in order before a folder is read as images
# or .npy samples: a recognizer says whether an existing path is its format, the opener opens it.
Recognizer = Callable[[Path], bool]
Opener = Callable[[str, OpenOptions], Part]


def file_with_suffix(*suffixes: str) -> Recognizer:
    """A recognizer of files (not folders) whose suffix, in any case, is one of `suffixes`."""
    return lambda path: path.suffix.lower() in suffixes and not path.is_dir()


def concatenated(arrays: list[np.ndarray], where: str | None = None) -> np.ndarray:
    """Arrays of samples as one along the sample axis; samples of different sizes are refused."""
    if len({a.shape[1:] for a in arrays}) > 1:
        raise InputError("images of different sizes cannot form one batch; resize them first", where)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
