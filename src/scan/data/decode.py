"""Decoding image files into one uint8 N×C×S×S tensor, once: DataLoader workers decode with
Pillow, and the result is cached under the per-user cache folder so later runs and stages read
raw pixels. Shared by the image-folder and ImageNet sources.

Everything is held in memory; folders too large for that are not streamed (yet): `check_memory`
refuses them with a clear error instead of letting the machine swap or the process be killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scan.console import echo, progress
from scan.errors import ScanError

# Case-insensitive file extensions read as images; any other file is ignored silently.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Bump when decoding changes what pixels a file gives, so stale caches are not reused.
DECODE_VERSION = 1
# Refuse to hold more than this share of the memory that is available now.
MEMORY_SHARE = 0.8
# Below this many files, worker start-up costs more than it saves.
MIN_FILES_FOR_WORKERS = 256
# Modes whose pixels are grey levels (everything else is converted to RGB).
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def cache_root() -> Path:
    """The per-user cache folder: $XDG_CACHE_HOME/scan, or ~/.cache/scan (XDG ignores a
    relative XDG_CACHE_HOME, and so do we)."""
    env = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(env) if env and Path(env).is_absolute() else Path.home() / ".cache"
    return base / "scan"


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def cpu_workers(limit: int) -> int:
    """DataLoader workers: up to `limit`, no more than the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(limit, cpus))


# ---------------------------------------------------------------------------------------------
# Memory


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(nbytes: int, what: str) -> None:
    """Raise ScanError when `nbytes` exceed MEMORY_SHARE of the available memory (when known)."""
    available = available_memory()
    if available is not None and nbytes > MEMORY_SHARE * available:
        raise ScanError(
            f"{what} needs {nbytes / 2**30:.1f} GiB as uint8 pixels, more than {MEMORY_SHARE:.0%} of the "
            f"{available / 2**30:.1f} GiB of memory available; streaming from disk is not implemented, "
            f"so lower data.size or use fewer images"
        )


# ---------------------------------------------------------------------------------------------
# Decoding one file


def decode_image(path: str | Path, size: int, channels: int, crop: float = 1.0) -> np.ndarray:
    """Decode one image file to uint8 channels×size×size.

    The image is turned upright (EXIF orientation), converted to grey or RGB (palette, alpha,
    CMYK and 16-bit modes included; alpha is dropped), then the centred square of side
    `crop`·short side is resized to size×size (Pillow's antialiased bilinear). With crop=1 this
    equals "resize the short side to `size`, centre-crop `size`"; with crop=0.875 it equals
    torchvision's Resize(round(size/0.875)) + CenterCrop(size). Raises whatever Pillow raises on
    an unreadable or truncated file.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay >= the
        # wanted square's, which is much faster for photos and changes little after resizing.
        im.draft("RGB" if channels == 3 else "L", (int(size / crop), int(size / crop)))
        im.load()
        if _orientation(im) != 1:  # EXIF orientation: camera photos stored sideways
            im = ImageOps.exif_transpose(im)
        pixels = _to_mode(im, channels)
    width, height = pixels.size
    side = min(width, height) * crop
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    # Resizing the cropped box directly is the same as resize-then-crop, and cheaper;
    # reducing_gap lets Pillow shrink big images by whole factors first (fast, still antialiased).
    out = pixels.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    array = np.array(out, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _orientation(im) -> int:
    """The EXIF orientation tag (1 = upright); a broken EXIF block must not cost the image."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types
        return 1


def _to_mode(im, channels: int):
    """A loaded Pillow image as mode 'L' (channels=1) or 'RGB' (channels=3)."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer and float grey: Pillow's own convert('L') clips at 255 instead of
        # scaling, so scale here: 16-bit (and 'I', which is how 16-bit PNGs may open) 0..65535
        # -> 0..255 by v/257 (65535/257 = 255 exactly); float is taken as 0..1 when it fits.
        values = np.asarray(im, dtype=np.float64)
        if mode == "F":
            scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
        else:
            scale = 1.0 / 257.0
        im = Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), mode="L")
    elif mode in ("P", "PA"):
        # via RGBA, so palette transparency is handled the way Pillow recommends (then dropped)
        im = im.convert("RGBA")
    if im.mode in _GREY_MODES:
        im = im.convert("L")
        return im.convert("RGB") if channels == 3 else im
    rgb = im.convert("RGB")  # RGBA/LA lose alpha; CMYK, YCbCr, LAB are converted
    return rgb.convert("L") if channels == 1 else rgb  # ITU-R 601 luma, as `conform`


# ---------------------------------------------------------------------------------------------
# Decoding many files (DataLoader workers)


class _FileDataset(torch.utils.data.Dataset):
    """Item i: (i, uint8 C×S×S array or None, error text or None) for file i."""

    def __init__(self, paths: list[str], size: int, channels: int, crop: float):
        self.paths, self.size, self.channels, self.crop = paths, size, channels, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, decode_image(self.paths[i], self.size, self.channels, self.crop), None
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
            return i, None, f"{type(err).__name__}: {err}"


def _as_list(batch: list) -> list:
    """Collate that keeps items as they are (a module-level function, so workers can pickle it)."""
    return batch


def decode_files(paths: list[str], size: int, channels: int, crop: float = 1.0,
                 workers: int = 4) -> tuple[torch.Tensor, list[int]]:
    """Decode `paths` into one preallocated tensor.

    Returns (images, ok): uint8 K×channels×size×size for the K files that decoded, in the order
    of `paths`, and the positions in `paths` of those K files.
    """
    n = len(paths)
    images = torch.empty((n, channels, size, size), dtype=torch.uint8)
    workers = workers if n >= MIN_FILES_FOR_WORKERS else 0
    loader = torch.utils.data.DataLoader(
        _FileDataset(paths, size, channels, crop), batch_size=32, shuffle=False,
        num_workers=workers, collate_fn=_as_list,
    )
    ok: list[int] = []
    for batch in progress(loader, len(loader), "decoding"):
        for i, array, _ in batch:
            if array is not None:
                images[len(ok)] = torch.from_numpy(array)
                ok.append(i)
    return images[: len(ok)], ok


# ---------------------------------------------------------------------------------------------
# Decoding once: the cache


@dataclass
class Decoded:
    """Pixels of the files that decoded, their ids, and the files that did not."""

    images: torch.Tensor  # uint8 K×C×S×S
    ids: list[str]  # K paths relative to the root, in sorted order
    skipped: list[str]  # relative paths of the files that could not be decoded


def cache_key(root: Path, files: list[str], size: int, channels: int, crop: float) -> str:
    """sha256 over the folder, each file's relative path, byte size and mtime, and the decoding
    settings: a changed, added or removed file, or another size, gives another key."""
    entries = []
    for rel in files:
        try:
            st = os.stat(root / rel)
            entries.append([rel, st.st_size, st.st_mtime_ns])
        except OSError:  # vanished since it was listed: decoding will skip it
            entries.append([rel, -1, -1])
    blob = json.dumps({"version": DECODE_VERSION, "root": str(root.resolve()), "files": entries,
                       "size": size, "channels": channels, "crop": crop})
    return hashlib.sha256(blob.encode()).hexdigest()


def decode_cached(root: Path, files: list[str], size: int, channels: int, crop: float = 1.0,
                  workers: int = 4, what: str = "images") -> Decoded:
    """Decode `files` (paths relative to `root`) once; later calls with the same files and
    settings read the cached uint8 array from cache_root()/decoded/<key>.npy (+ .json).

    Files that fail to decode are skipped and reported in one warning line, on every call.
    """
    key = cache_key(root, files, size, channels, crop)
    folder = cache_root() / "decoded"
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    decoded = _read_cache(npy, meta)
    if decoded is None:
        echo(f"{what}: decoding {len(files)} images from {root} to {channels}×{size}×{size} "
             f"(once; cached in {folder})")
        images, ok = decode_files([str(root / rel) for rel in files], size, channels, crop, workers)
        kept = set(ok)
        decoded = Decoded(images, [files[i] for i in ok], [rel for i, rel in enumerate(files) if i not in kept])
        _write_cache(decoded, folder, npy, meta)
    if decoded.skipped:
        shown = ", ".join(decoded.skipped[:3]) + (", ..." if len(decoded.skipped) > 3 else "")
        echo(f"warning: {what}: skipped {len(decoded.skipped)} unreadable image file(s) in {root}: {shown}")
    return decoded


def _read_cache(npy: Path, meta: Path) -> Decoded | None:
    """The cached decode, or None when it is missing or does not match its metadata."""
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        images = torch.from_numpy(np.load(npy, allow_pickle=False))
    except (OSError, ValueError):
        return None
    if images.dtype != torch.uint8 or len(images) != len(info.get("ids", ())):
        return None
    return Decoded(images, list(info["ids"]), list(info.get("skipped", [])))


def _write_cache(decoded: Decoded, folder: Path, npy: Path, meta: Path) -> None:
    """Write the .npy, then the .json that marks it complete, each atomically (temp + rename).
    A cache that cannot be written (disk full, read-only home) only costs a decode next time."""
    nbytes = decoded.images.numel()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(folder).free < 2 * nbytes:
            echo(f"note: not caching decoded images ({nbytes / 2**30:.1f} GiB): too little free disk in {folder}")
            return
        tmp = npy.with_name(npy.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, decoded.images.numpy(), allow_pickle=False)
        os.replace(tmp, npy)
        tmp = meta.with_name(meta.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"ids": decoded.ids, "skipped": decoded.skipped}))
        os.replace(tmp, meta)
    except OSError as err:
        print(f"scan: note: could not cache decoded images in {folder}: {err}", file=sys.stderr)
