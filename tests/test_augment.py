import pytest
import torch
import torchvision.transforms.functional as TF

from scan.data import augment
from scan.data.augment import VIEWS, normalize, simclr_view, strong_view, weak_view

MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _stats(c: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return MEAN3[:c], STD3[:c]


def _images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)


def _unnormalize(x: torch.Tensor, c: int) -> torch.Tensor:
    """Back to the 0–255 scale."""
    mean, std = _stats(c)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x * s + m) * 255


@pytest.mark.parametrize("name", sorted(VIEWS))
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 1, 8, 8), (3, 3, 12, 20), (3, 1, 9, 6)])
def test_views_keep_shape_and_return_float32(name, shape):
    images = _images(*shape)
    out = VIEWS[name](images, *_stats(shape[1]))
    assert out.shape == images.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_weak_view_is_deterministic_hand_normalisation():
    images = _images(4, 3, 8, 8)
    expected = (images.float() / 255 - torch.tensor(MEAN3).view(1, 3, 1, 1)) / torch.tensor(
        STD3
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(weak_view(images, MEAN3, STD3), expected)
    torch.testing.assert_close(weak_view(images, MEAN3, STD3), weak_view(images, MEAN3, STD3))
    torch.testing.assert_close(normalize(images, MEAN3, STD3), expected)


def test_normalize_rejects_wrong_stat_length():
    with pytest.raises(ValueError):
        normalize(_images(2, 1, 4, 4), MEAN3, STD3)


@pytest.mark.parametrize("view", [simclr_view, strong_view])
def test_random_views_differ_per_sample_and_are_seeded(view):
    images = _images(1, 3, 32, 32).expand(2, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    first = view(images, MEAN3, STD3)
    torch.manual_seed(0)
    second = view(images, MEAN3, STD3)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first[0], first[1])


def test_simclr_with_everything_off_is_identity():
    images = _images(4, 3, 16, 16)
    out = simclr_view(
        images, MEAN3, STD3, crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False,
        jitter=None, grayscale_p=0,
    )
    torch.testing.assert_close(out, normalize(images, MEAN3, STD3))


def test_simclr_quarter_area_crop_is_an_8x8_crop_scaled_up():
    # Channel 0 is 8·column, channel 1 is 8·row: a crop scaled 2× has steps of 4 inside.
    ramp = torch.arange(16) * 8
    image = torch.stack([ramp.expand(16, 16), ramp[:, None].expand(16, 16), ramp.expand(16, 16)])
    images = image.to(torch.uint8).expand(8, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = simclr_view(
        images, MEAN3, STD3, crop_scale=(0.25, 0.25), crop_ratio=(1, 1), hflip=False,
        jitter=None, grayscale_p=0,
    )
    pixels = _unnormalize(out, 3)
    col_steps = pixels[:, 0].diff(dim=2)[:, :, 1:-1]
    row_steps = pixels[:, 1].diff(dim=1)[:, 1:-1, :]
    torch.testing.assert_close(col_steps, torch.full_like(col_steps, 4.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(row_steps, torch.full_like(row_steps, 4.0), atol=1e-3, rtol=0)
    # The crop spans 8 source pixels and lies inside the image.
    span = pixels[:, 0].amax((1, 2)) - pixels[:, 0].amin((1, 2))
    assert ((span > 8 * 7 - 1e-3) & (span < 8 * 8 + 1e-3)).all()
    assert (pixels > -1e-3).all() and (pixels < 120 + 1e-3).all()
    # Different samples got different crops.
    assert len(set(pixels[:, 0, 8, 8].round().tolist())) > 1


def test_simclr_small_crop_has_the_given_size_and_samples_its_box():
    # Multi-crop's small crops: a 4×4 box (area 1/16 of 16×16) resized to 4×4 is an exact copy of
    # 4×4 source pixels, so the column ramp keeps its step of 8 and stays inside the image.
    ramp = (torch.arange(16) * 8).expand(3, 16, 16)
    images = ramp.to(torch.uint8).expand(5, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = simclr_view(images, MEAN3, STD3, crop_scale=(1 / 16, 1 / 16), crop_ratio=(1, 1), hflip=False,
                      jitter=None, grayscale_p=0, size=4)
    assert out.shape == (5, 3, 4, 4)
    pixels = _unnormalize(out, 3)[:, 0]
    torch.testing.assert_close(pixels.diff(dim=2), torch.full((5, 4, 3), 8.0), atol=1e-3, rtol=0)
    assert (pixels > -1e-3).all() and (pixels < 120 + 1e-3).all()


def test_simclr_box_that_cannot_fit_falls_back_to_the_centre_crop():
    # A full-area square box cannot fit a 12×20 image: torchvision falls back to the centre
    # 12×12 crop (columns 4..15), here stretched to 20 columns.
    image = (torch.arange(20) * 8).expand(3, 12, 20)
    images = image.to(torch.uint8).expand(2, -1, -1, -1).contiguous()
    out = simclr_view(
        images, MEAN3, STD3, crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False,
        jitter=None, grayscale_p=0,
    )
    pixels = _unnormalize(out, 3)[:, 0]
    # Output column m samples source column 4 + (m + 0.5)·12/20 - 0.5 bilinearly.
    source = 4 + (torch.arange(20) + 0.5) * 12 / 20 - 0.5
    torch.testing.assert_close(pixels, (8 * source).expand_as(pixels), atol=1e-3, rtol=0)


def test_simclr_grayscale_always_gives_equal_channels():
    out = _unnormalize(simclr_view(_images(6, 3, 16, 16), MEAN3, STD3, grayscale_p=1.0), 3)
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 0], out[:, 2], atol=1e-3, rtol=0)


def test_simclr_brightness_jitter_stays_in_range_per_sample():
    images = torch.full((64, 3, 8, 8), 100, dtype=torch.uint8)
    out = _unnormalize(
        simclr_view(images, MEAN3, STD3, jitter=(0.4, 0, 0, 0), jitter_p=1.0, grayscale_p=0), 3
    )
    per_sample = out.mean((1, 2, 3))
    # A constant image stays constant; each sample has its own factor in [0.6, 1.4].
    torch.testing.assert_close(out, per_sample.view(-1, 1, 1, 1).expand_as(out), atol=1e-3, rtol=0)
    assert (per_sample >= 60 - 1e-3).all() and (per_sample <= 140 + 1e-3).all()
    assert per_sample.std() > 1


def test_simclr_jitter_off_for_single_channel_keeps_constant_image():
    images = torch.full((8, 1, 8, 8), 77, dtype=torch.uint8)
    out = simclr_view(images, *_stats(1), jitter_p=0, grayscale_p=1.0)
    torch.testing.assert_close(out, normalize(images, *_stats(1)))


def test_strong_with_ops_and_cutout_off_is_normalize():
    images = _images(4, 3, 8, 8)
    out = strong_view(images, MEAN3, STD3, hflip=False, num_ops=0, cutout=0)
    torch.testing.assert_close(out, normalize(images, MEAN3, STD3))


@pytest.mark.parametrize("cutout", [1, 5, 16])
def test_cutout_holes_are_zero_squares_of_bounded_side(cutout):
    images = torch.full((64, 3, 12, 10), 200, dtype=torch.uint8)
    out = strong_view(images, MEAN3, STD3, hflip=False, num_ops=0, cutout=cutout)
    zero = out == 0
    assert (zero.all(1) == zero.any(1)).all()  # the hole covers every channel
    hole = zero[:, 0]
    counts = hole.sum((1, 2))
    assert ((counts >= 1) & (counts <= cutout**2)).all()
    rows, cols = hole.any(2).sum(1), hole.any(1).sum(1)
    assert (rows <= cutout).all() and (cols <= cutout).all()
    assert torch.equal(rows * cols, counts)  # a clipped square is a full rectangle
    torch.testing.assert_close(out[~zero], normalize(images, MEAN3, STD3)[~zero])


def test_posterize_four_bits_keeps_multiples_of_16():
    x = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 255
    out = augment._posterize(x, torch.tensor([4.0])) * 255
    torch.testing.assert_close(out, (out / 16).round() * 16)
    assert out.max() == 240


def test_solarize_threshold_zero_inverts():
    x = _images(2, 3, 8, 8).float() / 255
    torch.testing.assert_close(augment._solarize(x, torch.zeros(2)), 1 - x)


def _gray(img: torch.Tensor) -> torch.Tensor:
    if img.shape[0] == 1:
        return img
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def _ref_autocontrast(img, _):
    out = img.clone()
    for c in range(img.shape[0]):
        lo, hi = img[c].min(), img[c].max()
        if hi > lo:
            out[c] = (img[c] - lo) / (hi - lo)
    return out


def _ref_posterize(img, bits):
    mask = 256 - 2 ** (8 - int(bits))
    return ((img * 255).round().to(torch.uint8) & mask).float() / 255


def _ref_solarize(img, threshold):
    levels = (img * 255).round()
    return torch.where(levels >= threshold, 255 - levels, levels) / 255


SINGLE_IMAGE_OPS = {
    "brightness": (lambda img, f: (f * img).clamp(0, 1), [0.05, 0.5, 0.95]),
    "color": (lambda img, f: (_gray(img) + f * (img - _gray(img))).clamp(0, 1), [0.05, 0.5, 0.95]),
    "contrast": (
        lambda img, f: (_gray(img).mean() + f * (img - _gray(img).mean())).clamp(0, 1),
        [0.05, 0.5, 0.95],
    ),
    "posterize": (_ref_posterize, [4.0, 6.5, 8.0]),
    "solarize": (_ref_solarize, [0.0, 128.0, 256.0]),
    "autocontrast": (_ref_autocontrast, [0.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(SINGLE_IMAGE_OPS))
def test_batched_op_matches_single_image_definition(name, channels):
    reference, magnitudes = SINGLE_IMAGE_OPS[name]
    x = _images(3, channels, 6, 7, seed=1).float() / 255
    x[2, 0] = 128 / 255  # a constant channel
    batched = augment._PIXEL_OPS[name](x, torch.tensor(magnitudes))
    for i, magnitude in enumerate(magnitudes):
        torch.testing.assert_close(batched[i], reference(x[i], magnitude))


def test_sharpness_keeps_border_and_constant_images():
    x = _images(2, 3, 6, 6).float() / 255
    out = augment._sharpness(x, torch.tensor([0.05, 0.95]))
    inner = torch.zeros(6, 6, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    torch.testing.assert_close(out[..., ~inner], x[..., ~inner])
    flat = torch.full((1, 3, 6, 6), 0.3)
    torch.testing.assert_close(augment._sharpness(flat, torch.tensor([0.5])), flat)


def test_hue_matches_torchvision_per_image():
    x = _images(4, 3, 8, 8).float() / 255
    x[3] = 0.4  # grey pixels keep their value
    shifts = torch.tensor([-0.1, 0.03, 0.5, 0.2])
    out = augment._hue(x, shifts)
    for i in range(4):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-5, rtol=0)


def test_translate_one_pixel_shifts_columns_with_zero_fill():
    x = _images(2, 3, 5, 10).float() / 255 + 0.01
    out = augment._warp(x, augment._translate_x(torch.tensor([0.1, -0.1]), 5, 10))
    torch.testing.assert_close(out[0, :, :, :-1], x[0, :, :, 1:])
    torch.testing.assert_close(out[1, :, :, 1:], x[1, :, :, :-1])
    assert (out[0, :, :, -1] == 0).all() and (out[1, :, :, 0] == 0).all()


def test_rotate_quarter_turn_is_counter_clockwise_as_pil():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 0, 5] = 1.0  # top-right corner
    out = augment._warp(x, augment._rotate(torch.tensor([90.0]), 6, 6))
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)))
    assert out[0, 0, 0, 0] == 1.0  # now top-left
    torch.testing.assert_close(augment._warp(x, augment._rotate(torch.tensor([0.0]), 6, 6)), x)


def test_random_ops_keep_images_in_unit_range():
    torch.manual_seed(0)
    x = _images(256, 3, 8, 8).float() / 255
    out = augment._random_op_(augment._random_op_(x.clone()))
    assert out.shape == x.shape
    assert (out >= 0).all() and (out <= 1).all()
    # With 256 samples every one of the 14 ops is almost surely drawn; most samples change.
    assert (out != x).flatten(1).any(1).float().mean() > 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(VIEWS))
@pytest.mark.parametrize("channels", [1, 3])
def test_views_run_on_cuda(name, channels):
    images = _images(16, channels, 12, 10)
    torch.manual_seed(0)
    out = VIEWS[name](images.cuda(), *_stats(channels))
    assert out.device.type == "cuda" and out.shape == images.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.manual_seed(0)
    torch.testing.assert_close(out, VIEWS[name](images.cuda(), *_stats(channels)))
    if name == "weak":
        torch.testing.assert_close(out.cpu(), weak_view(images, *_stats(channels)))
