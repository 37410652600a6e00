"""Decoding image files into one uint8 N×C×S×S array, once: DataLoader workers decode with
Pillow, straight into an .npy file under the per-user cache folder, so later runs and stages read
raw pixels. Shared by the image-folder and ImageNet sources.

The cached array is returned as `DiskImages` (memory-mapped); the pipeline loads it into memory
when it fits and streams it batch by batch otherwise (scan.data.stream). Without room for the
cache on disk, images are decoded into memory, which then has to hold them.
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

from scan.checkpoint import remove_stale_temps, save_text, temp_path
from scan.console import echo, progress
from scan.data.stream import DiskImages, Images
from scan.errors import ScanError, WriteError

# Case-insensitive file extensions read as images; any other file is ignored silently.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Bump when decoding changes what pixels a file gives, so stale caches are not reused.
DECODE_VERSION = 1
# Refuse to hold more than this share of the memory that is available now.
MEMORY_SHARE = 0.8
# Free disk to leave beyond the decoded cache itself.
DISK_MARGIN = 256 * 2**20
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


def fits_in_memory(nbytes: int) -> bool:
    """Whether `nbytes` stay within MEMORY_SHARE of the memory available now (True when unknown)."""
    available = available_memory()
    return available is None or nbytes <= MEMORY_SHARE * available


def check_memory(nbytes: int, what: str, remedy: str = "lower data.size or use fewer images") -> None:
    """Raise ScanError when `nbytes` exceed MEMORY_SHARE of the available memory (when known)."""
    if not fits_in_memory(nbytes):
        raise ScanError(
            f"{what} needs {nbytes / 2**30:.1f} GiB as uint8 pixels, more than {MEMORY_SHARE:.0%} of the "
            f"{available_memory() / 2**30:.1f} GiB of memory available; {remedy}"
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
                 workers: int = 4, out: np.ndarray | None = None) -> tuple[torch.Tensor, list[int]]:
    """Decode `paths` into one preallocated array: `out` (uint8, at least len(paths)×channels×
    size×size, e.g. a memory-mapped .npy file) or a new in-memory one.

    Returns (images, ok): uint8 K×channels×size×size for the K files that decoded, in the order
    of `paths` (the first K rows of `out` when given), and the positions in `paths` of those K files.
    """
    n = len(paths)
    images = torch.from_numpy(out) if out is not None else torch.empty((n, channels, size, size), dtype=torch.uint8)
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

    images: Images  # uint8 K×C×S×S: DiskImages over the cache file, or a tensor when not cached
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
    """Decode `files` (paths relative to `root`) once, into cache_root()/decoded/<key>.npy (+ .json);
    later calls with the same files and settings read that file. The images come back as
    DiskImages over it, so no call needs memory for all of them.

    Without room on disk for the cache, the files are decoded into memory instead (a ScanError when
    that does not fit either). Files that fail to decode are skipped and reported in one warning
    line, on every call.
    """
    key = cache_key(root, files, size, channels, crop)
    folder = cache_root() / "decoded"
    for stale in remove_stale_temps([folder]):  # what decodes that were killed left behind
        echo(f"{what}: removed {stale.name}, a partial decode left by a process that is gone")
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    decoded = _read_cache(npy, meta)
    if decoded is None:
        echo(f"{what}: decoding {len(files)} images from {root} to {channels}×{size}×{size} "
             f"(once; cached in {folder})")
        decoded = _decode_to_cache([str(root / rel) for rel in files], files, (size, channels, crop), workers, npy, meta)
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
        images = DiskImages(npy, length=len(info["ids"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Decoded(images, list(info["ids"]), list(info.get("skipped", [])))


def _decode_to_cache(paths: list[str], files: list[str], settings: tuple[int, int, float], workers: int,
                     npy: Path, meta: Path) -> Decoded:
    """Decode into a memory-mapped temp .npy, then rename it and write the .json that marks it
    complete (each atomically), so an interrupted decode never leaves a cache that looks whole.
    Rows of files that failed stay at the end of the file, unused. A cache that cannot be written
    (too little disk, read-only home) costs a decode into memory, and a decode next time."""
    size, channels, crop = settings
    shape = (len(paths), channels, size, size)
    nbytes = int(np.prod(shape))
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(npy.parent).free
    except OSError as err:
        free, reason = 0, f"could not create {npy.parent}: {err}"
    else:
        reason = f"{nbytes / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free in {npy.parent}"
    if free >= nbytes + DISK_MARGIN:
        tmp = temp_path(npy)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            _, ok = decode_files(paths, size, channels, crop, workers, out=out)
            out.flush()
            del out
            os.replace(tmp, npy)
            ids, skipped = [files[i] for i in ok], _skipped(files, ok)
            save_text(json.dumps({"ids": ids, "skipped": skipped}), meta)
            return Decoded(DiskImages(npy, length=len(ok)), ids, skipped)
        except (OSError, WriteError) as err:
            reason = f"could not write {npy.parent}: {err}"
        finally:
            tmp.unlink(missing_ok=True)  # gone after the rename; what an error or interrupt left
    check_memory(nbytes, f"decoding without a cache ({reason})",
                 remedy="free disk space in the cache folder (or point XDG_CACHE_HOME at a larger disk) so the "
                        "decoded images can be streamed from there")
    print(f"scan: note: not caching decoded images: {reason}", file=sys.stderr)
    images, ok = decode_files(paths, size, channels, crop, workers)
    return Decoded(images, [files[i] for i in ok], _skipped(files, ok))


def _skipped(files: list[str], ok: list[int]) -> list[str]:
    kept = set(ok)
    return [rel for i, rel in enumerate(files) if i not in kept]
