"""Training data for the search: Fashion-MNIST from Debian's package (default) or an ImageFolder.

A :class:`Split` yields ``(images, labels)`` batches as float tensors at the training resolution,
normalised, in NCHW. Fashion-MNIST is read from the idx files ``dataset-fashion-mnist`` installs
(no download); its 60k training images are split into 50k for weight steps and 10k held out for
architecture steps and validation, and the 10k test images are the test split.
"""
from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latbench.errors import ConfigError
from latbench.settings import fashion_mnist_dir

log = logging.getLogger(__name__)

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Split:
    """A labelled set of images: ``load(idx) -> uint8 tensor NxCxHxW`` plus labels."""

    def __init__(self, labels: np.ndarray, load: Callable[[np.ndarray], torch.Tensor], resolution: int,
                 mean: tuple[float, ...], std: tuple[float, ...], augment: bool = False) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self._load = load
        self.resolution = resolution
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray, gen: torch.Generator | None = None,
              shard: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The images ``idx`` (augmented with ``gen``); ``shard=(rank, world)``: only that rank's
        contiguous ``1/world`` of them, with the flips the whole batch would get (so the shards of
        all ranks together are exactly the unsharded batch)."""
        flip = torch.rand(len(idx), generator=gen) < 0.5 if self.augment and gen is not None else None
        if shard is not None:
            rank, world = shard
            lo, hi = len(idx) * rank // world, len(idx) * (rank + 1) // world
            idx = idx[lo:hi]
            flip = flip[lo:hi] if flip is not None else None
        x = self._load(idx).float().div_(255.0)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        if flip is not None:  # random horizontal flip
            x[flip] = x[flip].flip(-1)
        x = (x - self.mean) / self.std
        return x, torch.from_numpy(self.labels[idx])

    def batches(self, batch_size: int, seed: int | None = None, limit: int | None = None,
                drop_last: bool = True, shard: tuple[int, int] | None = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in a shuffled order fixed by ``seed`` (in order when ``seed`` is None); ``shard``
        ``(rank, world)``: this rank's part of every (global) batch (see :meth:`batch`)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        order = torch.randperm(len(self), generator=gen).numpy() if gen is not None else np.arange(len(self))
        n = len(self) // batch_size if drop_last else -(-len(self) // batch_size)
        if limit is not None:
            n = min(n, limit)
        for b in range(n):
            yield self.batch(order[b * batch_size:(b + 1) * batch_size], gen, shard)

    def cycle(self, batch_size: int, seed: int,
              shard: tuple[int, int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches, reshuffled each pass (pass ``i`` uses seed ``seed + i``)."""
        i = 0
        while True:
            yield from self.batches(batch_size, seed + i, shard=shard)
            i += 1


@dataclass
class Dataset:
    """Training, held-out (architecture steps, validation) and test splits."""

    name: str
    train: Split
    valid: Split
    test: Split
    n_classes: int
    in_channels: int


# -- Fashion-MNIST -------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte idx file")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_fashion_mnist() -> Path:
    """The directory of the Fashion-MNIST idx files (``$LATBENCH_FASHION_MNIST`` or Debian's)."""
    env = fashion_mnist_dir()
    candidates = ([env] if env else []) + list(FASHION_MNIST_DIRS)
    for d in candidates:
        if (d / "train-images-idx3-ubyte.gz").exists() or (d / "train-images-idx3-ubyte").exists():
            return d
    raise ConfigError("Fashion-MNIST not found: install it with 'sudo apt-get install dataset-fashion-mnist' "
                      "or pass --data PATH to an ImageFolder tree")


def _idx_file(d: Path, stem: str) -> Path:
    gz = d / f"{stem}.gz"
    return gz if gz.exists() else d / stem


def load_fashion_mnist(resolution: int = 28, n_valid: int = 10000) -> Dataset:
    """Fashion-MNIST (1 channel, 10 classes) at ``resolution`` (bilinear resize if not 28)."""
    d = find_fashion_mnist()
    xtr = torch.from_numpy(_read_idx(_idx_file(d, "train-images-idx3-ubyte")).copy()).unsqueeze(1)
    ytr = _read_idx(_idx_file(d, "train-labels-idx1-ubyte"))
    xte = torch.from_numpy(_read_idx(_idx_file(d, "t10k-images-idx3-ubyte")).copy()).unsqueeze(1)
    yte = _read_idx(_idx_file(d, "t10k-labels-idx1-ubyte"))
    n_train = len(ytr) - n_valid

    def split(x: torch.Tensor, y: np.ndarray, augment: bool) -> Split:
        return Split(y, lambda idx: x[torch.from_numpy(np.asarray(idx))], resolution, (FASHION_MEAN,),
                     (FASHION_STD,), augment)

    return Dataset("fashion-mnist", split(xtr[:n_train], ytr[:n_train], True),
                   split(xtr[n_train:], ytr[n_train:], False), split(xte, yte, False), 10, 1)


# -- ImageFolder ---------------------------------------------------------------------------------
def _scan(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTS:
                files.append(p)
                labels.append(i)
    return files, np.array(labels, dtype=np.int64)


def _pil_loader(files: list[Path], resolution: int) -> Callable[[np.ndarray], torch.Tensor]:
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("--data needs Pillow to read images: pip install pillow") from None

    def load(idx: np.ndarray) -> torch.Tensor:
        out = np.empty((len(idx), resolution, resolution, 3), dtype=np.uint8)
        for j, i in enumerate(idx):
            with Image.open(files[int(i)]) as im:
                im = im.convert("RGB")
                # Resize the short side, then centre-crop to a square.
                w, h = im.size
                s = resolution / min(w, h)
                im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - resolution) // 2, (h - resolution) // 2
                out[j] = np.asarray(im.crop((left, top, left + resolution, top + resolution)))
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    return load


def load_image_folder(path: str | Path, resolution: int = 32, valid_fraction: float = 0.1,
                      seed: int = 0) -> Dataset:
    """An ImageFolder tree: ``root/<class>/*.jpg``, or ``root/{train,val}/<class>/*.jpg`` (``val``
    is then the test split). A ``valid_fraction`` of the training images is held out for
    architecture steps."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"--data {root}: not a directory (expected root/<class>/<images>)")
    train_root, test_root = root, None
    if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        train_root = root / "train"
        test_root = root / "val" if (root / "val").is_dir() else root / "test"
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ConfigError(f"--data {train_root}: expected one sub-directory per class, found {len(classes)}")
    files, labels = _scan(train_root, classes)
    if len(files) < 4:
        raise ConfigError(f"--data {train_root}: found only {len(files)} images ({', '.join(IMAGE_EXTS)})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    n_valid = max(1, int(round(len(files) * valid_fraction)))
    hold, keep = order[:n_valid], order[n_valid:]
    load_all = _pil_loader(files, resolution)

    def sub(idx_map: np.ndarray, augment: bool) -> Split:
        return Split(labels[idx_map], lambda idx: load_all(idx_map[idx]), resolution, IMAGENET_MEAN,
                     IMAGENET_STD, augment)

    if test_root is not None:
        tfiles, tlabels = _scan(test_root, classes)
        test = Split(tlabels, _pil_loader(tfiles, resolution), resolution, IMAGENET_MEAN, IMAGENET_STD)
    else:
        test = sub(hold, False)
    return Dataset(f"imagefolder:{root}", sub(keep, True), sub(hold, False), test, len(classes), 3)


def load_dataset(path: str | Path | None, resolution: int | None = None, seed: int = 0) -> Dataset:
    """``path`` None → Fashion-MNIST at ``resolution`` (default 28); else an ImageFolder (default 32)."""
    if path is None:
        return load_fashion_mnist(resolution or 28)
    return load_image_folder(path, resolution or 32, seed=seed)
