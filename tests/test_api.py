"""`scan.SCAN`: fit on arrays, numpy predictions, save/load, clear errors; and one preprocessing
path for arrays and files (the same pixels give the same clusters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import scan
from scan.errors import ScanError

# TINY_RUN of conftest as estimator parameters, on 300 digits: a few seconds.
TINY = dict(pretext__epochs=2, cluster__epochs=2, selflabel__epochs=1, selflabel__min_confident=0, cluster__num_heads=2)


@pytest.fixture(scope="module")
def digits_uint8() -> np.ndarray:
    return np.round(load_digits().images[:300] * 255 / 16).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted(digits_uint8, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return scan.SCAN(n_clusters=10, preset="digits", out=out, device="cpu", **TINY).fit(digits_uint8)


def test_fit_gives_labels_and_numpy_predictions(fitted, digits_uint8):
    assert fitted.labels_.dtype == np.int64 and fitted.labels_.shape == (300,)
    proba = fitted.predict_proba(digits_uint8[:20])
    assert isinstance(proba, np.ndarray) and proba.dtype == np.float32 and proba.shape == (20, 10)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(fitted.predict(digits_uint8[:20]), fitted.labels_[:20])
    # float in [0, 1] is the same image as uint8 0-255
    np.testing.assert_array_equal(fitted.predict_proba(digits_uint8[:20] / 255.0), proba)
    assert (fitted.run_dir_ / "config.yaml").is_file() and fitted.card["num_clusters"] == 10


def test_refit_on_the_same_images_reuses_the_run(fitted, digits_uint8, capsys):
    capsys.readouterr()
    labels = fitted.fit(digits_uint8).labels_
    out = capsys.readouterr().out
    assert out.count("finished earlier with this config, skipped") == 4
    np.testing.assert_array_equal(labels, fitted.labels_)


def test_save_and_load_predict_the_same(fitted, digits_uint8, tmp_path):
    folder = fitted.save(tmp_path / "model")
    loaded = scan.load(folder, device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(digits_uint8), fitted.predict_proba(digits_uint8))
    np.testing.assert_array_equal(scan.load(fitted.run_dir_).predict(digits_uint8), fitted.labels_)
    assert repr(loaded).startswith("SCAN(n_clusters=10") and "fitted" in repr(loaded)


def test_repr_and_clear_errors(tmp_path):
    model = scan.SCAN(n_clusters=5, pretext__epochs=3)
    assert repr(model) == "SCAN(n_clusters=5, preset='digits', pretext__epochs=3)"
    with pytest.raises(ScanError, match="not fitted yet"):
        model.predict(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ScanError, match="section__key"):
        scan.SCAN(epochs=3).config()
    with pytest.raises(ScanError, match="did you mean 'epochs'"):
        scan.SCAN(pretext__epoch=3).config()
    with pytest.raises(ScanError, match=r"float images must lie in \[0, 1\]"):
        scan.SCAN(out=tmp_path / "r", **TINY).fit(np.full((40, 8, 8), 2.0))
    with pytest.raises(ScanError, match="N×H×W or N×H×W×C"):
        scan.SCAN(out=tmp_path / "r", **TINY).fit(np.zeros((40, 64), np.uint8))
    with pytest.raises(ScanError, match="uint8"):
        scan.SCAN(out=tmp_path / "r", **TINY).fit(np.zeros((40, 8, 8), np.int32))


def test_the_same_pixels_give_the_same_clusters_as_an_array_and_as_png_files(reported_run, digits_uint8, tmp_path):
    # Digits widened to 8×12 by 2 noisy columns on each side: files are centre-cropped to the
    # digit, and so must arrays be (they used to be squashed to 8×8).
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (30, 8, 12), dtype=np.uint8)
    wide[:, :, 2:10] = digits_uint8[:30]
    paths = []
    for i, image in enumerate(wide):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(image).save(paths[-1])
    model = scan.load(reported_run, device="cpu")
    from_files = model.predict_proba([str(p) for p in paths])
    np.testing.assert_array_equal(model.predict_proba(wide), from_files)
    np.testing.assert_array_equal(model.predict_proba(digits_uint8[:30]), from_files)  # the digits themselves
    # Tall arrays too, and channel-last RGB: one preprocessing path.
    tall = np.ascontiguousarray(wide.transpose(0, 2, 1))
    np.testing.assert_array_equal(model.predict(tall), model.predict(digits_uint8[:30].transpose(0, 2, 1)))
    np.testing.assert_array_equal(model.predict(np.repeat(wide[..., None], 3, -1)), model.predict(wide))


def test_fit_on_image_files(tmp_path, digits_uint8):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(digits_uint8[:120]):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    model = scan.SCAN(n_clusters=4, out=tmp_path / "run", device="cpu", **TINY)
    labels = model.fit_predict(sorted(str(p) for p in folder.iterdir()))
    assert labels.shape == (120,) and set(labels.tolist()) <= set(range(4))
    assert model.predict([folder / "000.png"]).tolist() == labels[:1].tolist()
    assert Path(model.run_dir_) == tmp_path / "run"
