"""Batched image augmentations with per-sample random parameters, on any device.

Every view takes a uint8 batch ``B×C×H×W`` (C = 1 or 3) on CPU or CUDA and returns a float32
batch of the same shape, normalised per channel as ``(x / 255 - mean) / std``. Randomness comes
from the global torch RNG on the input's device, so results are reproducible under
``torch.manual_seed``. Intermediate images are float in [0, 1] and are clamped after every op.
"""

import math
from collections.abc import Callable, Sequence

import kornia.enhance
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

# ITU-R 601 luma weights, as PIL's "L" conversion and torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

# torchvision's RandomResizedCrop tries this many boxes before falling back to a centre crop.
_CROP_ATTEMPTS = 10


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Convert uint8 images to normalised float32.

    Args:
        images: uint8 ``B×C×H×W``.
        mean, std: per-channel statistics on the [0, 1] scale, length C.

    Returns:
        float32 ``B×C×H×W`` equal to ``(images / 255 - mean) / std``.
    """
    return _standardize(images.float(), mean, std, scale=255.0)


def weak_view(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Weak view: no randomness, images already come at base resolution.

    Args:
        images: uint8 ``B×C×H×W``.

    Returns:
        float32 ``B×C×H×W``, normalised.
    """
    return normalize(images, mean, std)


def simclr_view(
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    size: int | None = None,
) -> Tensor:
    """SimCLR view as in the original SCAN code.

    RandomResizedCrop back to H×W (or to size×size), horizontal flip (p 0.5), ColorJitter with probability
    ``jitter_p`` and grayscale with probability ``grayscale_p``, all with per-sample parameters.

    Args:
        images: uint8 ``B×C×H×W``.
        crop_scale: range of the crop area as a fraction of the image area.
        crop_ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        hflip: flip horizontally with p 0.5.
        jitter: (brightness, contrast, saturation, hue) strengths as torchvision's ColorJitter;
            None disables jitter.
        jitter_p: per-sample probability of applying the jitter.
        grayscale_p: per-sample probability of converting to grayscale (kept C-channel).
        size: side of the output crops; None keeps H×W (multi-crop's small crops pass a smaller one).

    Returns:
        float32 ``B×C×H×W`` (``B×C×size×size`` with ``size``), normalised.
    """
    x = images.float() / 255
    x = _random_resized_crop(x, crop_scale, crop_ratio, size)
    if hflip:
        x = _random_hflip(x)
    if jitter is not None and jitter_p > 0:
        x = _color_jitter(x, jitter, jitter_p)
    if grayscale_p > 0 and x.shape[1] == 3:
        gray = torch.rand(x.shape[0], device=x.device) < grayscale_p
        x = torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)
    return _standardize(x, mean, std)


def strong_view(
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    hflip: bool = True,
    num_ops: int = 4,
    cutout: int = 16,
) -> Tensor:
    """The original SCAN "ours" strong augmentation.

    Horizontal flip (p 0.5), then ``num_ops`` ops drawn with replacement per sample from the 14
    ops of ``_OPS``, each with a per-sample magnitude uniform in its range, then normalisation,
    then Cutout of one square hole of side in [1, ``cutout``] set to 0 (the mean colour).

    Args:
        images: uint8 ``B×C×H×W``.
        hflip: flip horizontally with p 0.5.
        num_ops: ops applied per sample; 0 disables them.
        cutout: maximum hole side in pixels; 0 disables cutout.

    Returns:
        float32 ``B×C×H×W``, normalised.
    """
    x = images.float() / 255
    if hflip:
        x = _random_hflip(x)
    for _ in range(num_ops):
        _random_op_(x)
    x = _standardize(x, mean, std)
    if cutout > 0:
        x = _cutout(x, cutout)
    return x


VIEWS: dict[str, Callable[..., Tensor]] = {
    "weak": weak_view,
    "simclr": simclr_view,
    "strong": strong_view,
}


def _standardize(
    x: Tensor, mean: Sequence[float], std: Sequence[float], scale: float = 1.0
) -> Tensor:
    """Normalise float ``B×C×H×W`` images on [0, ``scale``] to ``(x / scale - mean) / std``.

    ``mean`` and ``std`` have length C. One fused multiply-add instead of three passes.
    """
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"mean/std need {x.shape[1]} values, got {len(mean)} and {len(std)}")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return torch.addcmul(-m / s, x, 1 / (scale * s))


def _uniform(shape: int | tuple[int, ...], low: float, high: float, device: torch.device) -> Tensor:
    """Uniform samples in [low, high) of the given shape."""
    return low + (high - low) * torch.rand(shape, device=device)


def _random_hflip(x: Tensor) -> Tensor:
    """Flip each ``N×C×H×W`` sample horizontally with p 0.5."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _random_resized_crop(
    x: Tensor, scale: tuple[float, float], ratio: tuple[float, float], size: int | None = None
) -> Tensor:
    """torchvision's RandomResizedCrop with per-sample boxes, resized back to H×W (or size×size).

    All attempts are drawn at once and the first box that fits is kept; samples with none fall
    back to torchvision's centre crop.

    Args:
        x: float ``N×C×H×W``.

    Returns:
        float ``N×C×H×W`` (``N×C×size×size`` with ``size``).
    """
    n, _, h, w = x.shape
    dev = x.device
    area = h * w * _uniform((n, _CROP_ATTEMPTS), scale[0], scale[1], dev)
    aspect = _uniform((n, _CROP_ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]), dev).exp()
    box_w = (area * aspect).sqrt().round()
    box_h = (area / aspect).sqrt().round()
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)
    box_w = box_w.gather(1, first).squeeze(1)
    box_h = box_h.gather(1, first).squeeze(1)

    in_ratio = w / h
    if in_ratio < min(ratio):
        fallback_w, fallback_h = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(h * max(ratio)), h
    else:
        fallback_w, fallback_h = w, h
    found = fits.any(1)
    box_w = torch.where(found, box_w, float(fallback_w))
    box_h = torch.where(found, box_h, float(fallback_h))
    top = torch.where(
        found, (torch.rand(n, device=dev) * (h - box_h + 1)).floor(), ((h - box_h) / 2).floor()
    )
    left = torch.where(
        found, (torch.rand(n, device=dev) * (w - box_w + 1)).floor(), ((w - box_w) / 2).floor()
    )

    index = torch.arange(n, device=dev, dtype=x.dtype)
    boxes = torch.stack([index, left, top, left + box_w, top + box_h], 1)
    # At H×W the crop is never smaller than the output, so one bilinear sample per output pixel is
    # plain bilinear upsampling (and an exact copy for a full-size box); more samples would blur.
    # Smaller outputs (multi-crop's small crops, data.simclr_size_ratio) shrink a box by little
    # (cifar10_cpu: at most 32 -> 24 px), where one sample per pixel is close enough.
    out = (h, w) if size is None else (size, size)
    return roi_align(x, boxes, out, spatial_scale=1.0, sampling_ratio=1, aligned=True)


def _color_jitter(x: Tensor, jitter: tuple[float, float, float, float], p: float) -> Tensor:
    """torchvision's ColorJitter applied to each sample with probability ``p``.

    Factors are per sample; samples that skip the jitter get neutral factors so the whole batch
    goes through each op without a data-dependent selection. The op order is drawn once per batch
    instead of per sample (torchvision draws it per image), which keeps it to one pass per op.

    Args:
        x: float ``N×C×H×W`` in [0, 1].
        jitter: (brightness, contrast, saturation, hue) strengths.

    Returns:
        float ``N×C×H×W`` in [0, 1].
    """
    n, c = x.shape[:2]
    dev = x.device
    brightness, contrast, saturation, hue = jitter
    steps: list[tuple[Callable[[Tensor, Tensor], Tensor], Tensor, float]] = []
    if brightness > 0:
        steps.append((_brightness, _uniform(n, max(0.0, 1 - brightness), 1 + brightness, dev), 1.0))
    if contrast > 0:
        steps.append((_contrast, _uniform(n, max(0.0, 1 - contrast), 1 + contrast, dev), 1.0))
    # Saturation and hue leave a single-channel image unchanged, as in torchvision.
    if saturation > 0 and c == 3:
        steps.append((_color, _uniform(n, max(0.0, 1 - saturation), 1 + saturation, dev), 1.0))
    if hue > 0 and c == 3:
        steps.append((_hue, _uniform(n, -hue, hue, dev), 0.0))
    if not steps:
        return x

    apply = torch.rand(n, device=dev) < p
    order = torch.rand(len(steps), device=dev).argsort().tolist()
    for i in order:
        op, factor, neutral = steps[i]
        x = op(x, torch.where(apply, factor, neutral))
    return x


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    """Shift the hue of RGB ``N×3×H×W`` images by ``shift`` (N,) turns, as torchvision.

    A hue shift keeps each pixel's max and min channel (HSV value and saturation), so the result
    is rebuilt from them directly; a full RGB→HSV→RGB round trip is about 3× slower on CPU.
    """
    r, g, b = x.unbind(1)
    hi, lo = x.amax(1), x.amin(1)
    spread = hi - lo
    # Hue in sextants (0..6), from whichever channel holds the max; grey pixels (spread 0) get 0.
    sextant = torch.where(
        hi == r, g - b, torch.where(hi == g, b - r + 2 * spread, r - g + 4 * spread)
    ) / spread.clamp_min(1e-12)
    sextant = (sextant + 6 * shift.view(-1, 1, 1)).unsqueeze(1)
    # HSV→RGB: channel = max - spread·clamp(min(k, 4 - k), 0, 1) with k = (n + hue) mod 6.
    k = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + sextant
    k = k - 6 * (k / 6).floor()
    return hi.unsqueeze(1) - spread.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def _cutout(x: Tensor, size: int) -> Tensor:
    """Zero one square hole per ``N×C×H×W`` sample.

    The side is uniform in [1, size], the centre uniform over the pixels, clipped to the borders.
    """
    n, _, h, w = x.shape
    dev = x.device
    side = 1 + (torch.rand(n, device=dev) * size).long()
    cy = (torch.rand(n, device=dev) * h).long()
    cx = (torch.rand(n, device=dev) * w).long()
    y0, x0 = cy - side // 2, cx - side // 2
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + side)[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + side)[:, None])
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


# ---- the 14 strong ops: float N×C×H×W images in [0, 1], magnitudes of shape (N,) ----


def _gray(x: Tensor) -> Tensor:
    """Luma of ``N×C×H×W`` images as ``N×1×H×W``; a single channel is its own luma."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance blend ``degenerate + factor * (x - degenerate)``, clamped to [0, 1]."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def _autocontrast(x: Tensor, _: Tensor) -> Tensor:
    """Stretch each channel's min..max to 0..1, leaving constant channels unchanged."""
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    spread = hi - lo
    stretched = (x - lo) / spread.clamp_min(1e-12)
    return torch.where(spread > 0, stretched, x)


def _equalize(x: Tensor, _: Tensor) -> Tensor:
    """Histogram-equalise each channel as PIL.ImageOps.equalize."""
    return kornia.enhance.equalize(x)


def _solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert pixels at or above ``threshold`` (0–256, on the 0–255 scale)."""
    t = (threshold / 255).view(-1, 1, 1, 1)
    return torch.where(x >= t, 1 - x, x)


def _color(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grayscale image (saturation)."""
    return _blend(x, _gray(x), factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the mean of the grayscale image."""
    return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), factor)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with black."""
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH-filtered image, whose border pixels PIL leaves unfiltered."""
    c, h, w = x.shape[1:]
    if h < 3 or w < 3:
        return x
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, degenerate, factor)


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``int(bits)`` bits of the 8-bit value."""
    step = torch.pow(2.0, 8 - bits.floor()).view(-1, 1, 1, 1)
    levels = (x * 255).round()
    return (levels / step).floor() * step / 255


def _identity_matrix(v: Tensor) -> Tensor:
    """``N×3×3`` identity matrices, one per entry of ``v``."""
    return torch.eye(3, device=v.device).repeat(v.shape[0], 1, 1)


# Geometric ops return N×3×3 maps from output to input pixel coordinates (pixel k spans [k, k+1]),
# the convention of PIL's Image.transform, so shears pivot on the top-left corner as in PIL.


def _rotate(degrees: Tensor, h: int, w: int) -> Tensor:
    """Rotation about the image centre, as PIL's Image.rotate."""
    a = -torch.deg2rad(degrees)
    cos, sin = a.cos(), a.sin()
    cx, cy = w / 2, h / 2
    m = _identity_matrix(degrees)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = cos, sin, cx - cos * cx - sin * cy
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -sin, cos, cy + sin * cx - cos * cy
    return m


def _shear_x(v: Tensor, h: int, w: int) -> Tensor:
    """Horizontal shear ``x_in = x + v·y`` about the top-left corner, as PIL."""
    m = _identity_matrix(v)
    m[:, 0, 1] = v
    return m


def _shear_y(v: Tensor, h: int, w: int) -> Tensor:
    """Vertical shear ``y_in = y + v·x`` about the top-left corner, as PIL."""
    m = _identity_matrix(v)
    m[:, 1, 0] = v
    return m


def _translate_x(v: Tensor, h: int, w: int) -> Tensor:
    """Translation by ``v`` × width pixels."""
    m = _identity_matrix(v)
    m[:, 0, 2] = v * w
    return m


def _translate_y(v: Tensor, h: int, w: int) -> Tensor:
    """Translation by ``v`` × height pixels."""
    m = _identity_matrix(v)
    m[:, 1, 2] = v * h
    return m


def _warp(x: Tensor, matrix: Tensor) -> Tensor:
    """Resample ``N×C×H×W`` images through ``N×3×3`` output-to-input pixel maps.

    Nearest-neighbour sampling as PIL's default for transform/rotate; 0 outside the image.
    """
    h, w = x.shape[2:]
    # Output pixel centres mapped to input pixel coordinates, then to grid_sample's [-1, 1]; built
    # by broadcasting because affine_grid's batched matmul is several times slower on CPU.
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, -1, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, -1) + 0.5
    m = matrix[:, :2, :, None, None]
    source = m[:, :, 0] * xs + m[:, :, 1] * ys + m[:, :, 2]
    to_unit = torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype).view(1, 2, 1, 1)
    grid = (source * to_unit - 1).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# (name, low, high, mirror): ranges from the original SCAN data/augment.py as documented in the
# reference. "mirror" ops flip the magnitude's sign with p 0.5.
_OPS: tuple[tuple[str, float, float, bool], ...] = (
    ("identity", 0.0, 1.0, False),
    ("autocontrast", 0.0, 1.0, False),
    ("equalize", 0.0, 1.0, False),
    ("rotate", -30.0, 30.0, True),
    ("solarize", 0.0, 256.0, False),
    ("color", 0.05, 0.95, False),
    ("contrast", 0.05, 0.95, False),
    ("brightness", 0.05, 0.95, False),
    ("sharpness", 0.05, 0.95, False),
    ("shear_x", -0.1, 0.1, True),
    ("translate_x", -0.1, 0.1, True),
    ("translate_y", -0.1, 0.1, True),
    ("posterize", 4.0, 8.0, False),
    ("shear_y", -0.1, 0.1, True),
)

_PIXEL_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "solarize": _solarize,
    "color": _color,
    "contrast": _contrast,
    "brightness": _brightness,
    "sharpness": _sharpness,
    "posterize": _posterize,
}

_GEOMETRIC_OPS: dict[str, Callable[[Tensor, int, int], Tensor]] = {
    "rotate": _rotate,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


def _random_op_(x: Tensor) -> Tensor:
    """Apply one op slot in place: each sample draws an op from ``_OPS`` and a magnitude in range.

    All geometric samples share one warp; each pixel op runs once on the samples that drew it.

    Args:
        x: float ``N×C×H×W`` in [0, 1], overwritten.

    Returns:
        ``x``.
    """
    n, _, h, w = x.shape
    dev = x.device
    names = [name for name, _, _, _ in _OPS]
    low = torch.tensor([op[1] for op in _OPS], device=dev)
    high = torch.tensor([op[2] for op in _OPS], device=dev)
    mirror = torch.tensor([op[3] for op in _OPS], device=dev)

    op = (torch.rand(n, device=dev) * len(_OPS)).long()
    magnitude = low[op] + (high[op] - low[op]) * torch.rand(n, device=dev)
    flip_sign = mirror[op] & (torch.rand(n, device=dev) < 0.5)
    magnitude = torch.where(flip_sign, -magnitude, magnitude)

    matrix = _identity_matrix(magnitude)
    geometric = torch.zeros(n, dtype=torch.bool, device=dev)
    for name, build in _GEOMETRIC_OPS.items():
        chosen = op == names.index(name)
        matrix = torch.where(chosen[:, None, None], build(magnitude, h, w), matrix)
        geometric |= chosen

    idx = geometric.nonzero().squeeze(1)
    if idx.numel():
        x[idx] = _warp(x[idx], matrix[idx])
    for name, apply in _PIXEL_OPS.items():
        idx = (op == names.index(name)).nonzero().squeeze(1)
        if idx.numel():
            x[idx] = apply(x[idx], magnitude[idx]).clamp(0, 1)
    return x
