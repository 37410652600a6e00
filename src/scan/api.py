"""The Python entry points: where a run goes by default (`resolve_out`, shared with the CLI) and
a scikit-learn-style estimator, `scan.SCAN`, that trains on arrays or image files and predicts
numpy arrays.

    model = scan.SCAN(n_clusters=10, preset="digits", pretext__epochs=50)
    labels = model.fit_predict(X)          # X: uint8 N×H×W[×C], float in [0, 1], or file paths
    model.save("my-model"); scan.load("my-model").predict(X_new)

Config overrides follow scikit-learn's nested-parameter convention, `section__key=value`
(`pretext__epochs=50` is the CLI's `pretext.epochs=50`).
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scan.config import RunConfig, config_diff, config_from_dict
from scan.errors import ScanError


# ---------------------------------------------------------------------------------------------
# The default run directory


def _same_config(folder: Path, cfg: RunConfig) -> bool:
    """True when folder/config.yaml holds `cfg` up to the keys a run may change (device, runtime)."""
    from scan.rundir import RUNTIME_KEYS

    try:
        old = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()) or {}).to_dict()
    except (OSError, yaml.YAMLError, ScanError):
        return False
    return not [line for line in config_diff(old, cfg.to_dict()) if not line.startswith(RUNTIME_KEYS)]


def resolve_out(cfg: RunConfig, out: str | Path | None, force: bool = False, quiet: bool = False) -> Path:
    """The run directory of a command: `out` when given; else runs/PRESET, or the numbered
    runs/PRESET-2, -3, ... that holds this config (the same command resumes it), or the first
    free one when none does (said on stdout unless `quiet`). With `force`, runs/PRESET itself.

    Every rank of a launch gets the same answer: before rank 0 writes the config the free folder
    is the first one without a config, and after, it is the folder that holds this config."""
    if out is not None:
        return Path(out)
    base = Path("runs") / cfg.preset
    if force:
        return base
    free = None
    for n in itertools.count(1):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if not (folder / "config.yaml").is_file():
            free = free or folder
            if not folder.exists():
                break
        elif _same_config(folder, cfg):
            return folder
    if free != base and not quiet:
        print(f"note: {base} holds a run with another config; this run goes to {free} "
              f"(--out DIR chooses the folder, --force reruns {base} with this config)", flush=True)
    return free


# ---------------------------------------------------------------------------------------------
# Images given as arrays or files


def _is_file_list(x: Any) -> bool:
    return isinstance(x, (str, Path)) or (isinstance(x, (list, tuple)) and len(x) > 0
                                          and all(isinstance(p, (str, Path)) for p in x))


def _write_training_images(x: Any, folder: Path) -> dict[str, Any]:
    """Store the images of `fit(X)` where the run's config can name them, and return the data
    settings that read them: an .npy of the array for the `array` source (train = test = all of
    X, no labels), or, for files, a folder of links to them, in order, for the folder source.
    Both are named by a hash of their content, so the same X maps to the same config, and are
    written under a temporary name first, so an interrupted write is never taken for a whole one."""
    if _is_file_list(x):
        from scan.predict import find_images

        paths = find_images([x] if isinstance(x, (str, Path)) else list(x))
        digest = hashlib.sha256("\n".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:16]
        images = folder / f"files-{digest}"
        if not images.is_dir():
            partial = folder / f"files-{digest}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            width = len(str(len(paths)))
            for i, p in enumerate(paths):
                (partial / f"{i:0{width}d}{Path(p).suffix.lower()}").symlink_to(Path(p).resolve())
            partial.rename(images)
        return {"source": "folder", "path": str(images), "labels": "none"}
    from scan.data.arrays import as_uint8

    images = np.asarray(as_uint8(np.asarray(x)))
    if images.ndim not in (3, 4):
        raise ScanError(f"X must be images N×H×W or N×H×W×C (or a list of image files), got shape {images.shape}")
    digest = hashlib.sha256(images.tobytes() + str(images.shape).encode()).hexdigest()[:16]
    path = folder / f"arrays-{digest}.npy"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"arrays-{digest}.partial.npy"
        np.save(partial, images)
        partial.replace(path)
    return {"source": "array", "path": str(path)}


# ---------------------------------------------------------------------------------------------
# The estimator


def _override_strings(params: dict[str, Any]) -> list[str]:
    """{'pretext__epochs': 5} -> ['pretext.epochs=5'] (values written as YAML, as on the CLI)."""
    lines = []
    for name, value in params.items():
        dotted = name.replace("__", ".")
        if "." not in dotted:
            raise ScanError(f"unknown parameter {name!r}: config keys are given as section__key "
                            f"(e.g. pretext__epochs=50; scan config lists them)")
        lines.append(f"{dotted}={yaml.safe_dump(value, default_flow_style=True).splitlines()[0]}")
    return lines


class SCAN:
    """SCAN clustering with a scikit-learn-style interface.

    n_clusters: K. preset: the recipe to start from (scan presets). out: the run directory
        (None: a temporary one, kept while this object lives; `save` keeps the model).
    seed, device: as `scan run --seed/--device`.
    **params: config overrides as section__key=value, e.g. pretext__epochs=50.

    After `fit(X)`: `labels_` (int64 N, the cluster of each image of X), `run_dir_` and the
    model; `predict`/`predict_proba` take uint8 or float [0, 1] arrays N×H×W[×C] (any size;
    non-square ones are centre-cropped, as files are) or image file paths, and return numpy.
    """

    def __init__(self, n_clusters: int = 10, preset: str | None = "digits", out: str | Path | None = None,
                 seed: int = 0, device: str = "auto", **params: Any) -> None:
        self.n_clusters = n_clusters
        self.preset = preset
        self.out = out
        self.seed = seed
        self.device = device
        self.params = params
        self._model = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __repr__(self) -> str:
        args = [f"n_clusters={self.n_clusters}"] + ([f"preset={self.preset!r}"] if self.preset else [])
        args += [f"out={str(self.out)!r}"] if self.out is not None else []
        args += [f"seed={self.seed}"] if self.seed != 0 else []
        args += [f"device={self.device!r}"] if self.device != "auto" else []
        args += [f"{k}={v!r}" for k, v in self.params.items()]
        state = "" if self._model is None else f"  # fitted, model in {self.run_dir_}"
        return f"SCAN({', '.join(args)}){state}"

    def config(self) -> RunConfig:
        """The resolved config this estimator trains with (the data settings are set by fit)."""
        from scan.config import build_config

        return build_config(self.preset, overrides=_override_strings(self.params), clusters=self.n_clusters,
                            seed=self.seed, device=self.device)

    def fit(self, X: Any, y: Any = None) -> SCAN:
        """Train every stage on X (uint8 or float [0, 1] N×H×W[×C], or image file paths); the
        test split is X too (there are no labels, so evaluation reports label-free diagnostics).
        Refitting in the same `out` resumes or reuses the stages whose inputs did not change.
        `y` is ignored (clustering is unsupervised)."""
        import dataclasses

        from scan.config import validate
        from scan.console import warn_busy_cores
        from scan.pipeline import run_pipeline
        from scan.rundir import claim_folder

        cfg = self.config()
        if self.out is not None:
            root = Path(self.out)
        else:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="scan-")
            root = Path(self._tmp.name)
        claim_folder(root)  # a run directory before the images are stored in it
        settings = _write_training_images(X, root / "inputs")
        cfg.data = dataclasses.replace(cfg.data, **settings)
        validate(cfg)
        warn_busy_cores()
        run_pipeline(cfg, out=root, force=True)
        self._load(root)
        self.labels_ = self.predict(X)
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """fit(X), then the cluster of each image of X: int64 N."""
        return self.fit(X).labels_

    def _load(self, path: Path) -> None:
        from scan.predict import load

        self._model = load(path, self.device)
        self.run_dir_ = path

    @property
    def model_(self):
        """The fitted `scan.predict.ClusterModel` (backbone + selected head and its model card)."""
        if self._model is None:
            raise ScanError("this SCAN model is not fitted yet: call fit(X) first, or scan.load(DIR)")
        return self._model

    @property
    def card(self) -> dict:
        """The model.json sidecar: backbone, input size, channels, K, selected head, ..."""
        return self.model_.card

    @property
    def num_clusters(self) -> int:
        return self.model_.num_clusters

    @property
    def cluster_names(self) -> list[str | None] | None:
        """The class each cluster was matched to when the run had labels, else None."""
        return self.model_.cluster_names

    def predict_proba(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """float32 N×K cluster probabilities of images (arrays or file paths, as in fit)."""
        predictions = self.model_.predict(X if _is_file_list(X) else np.asarray(X), batch_size)
        if predictions.skipped:
            raise ScanError(f"{len(predictions.skipped)} file(s) could not be read as images: "
                            f"{', '.join(predictions.skipped[:3])}{', ...' if len(predictions.skipped) > 3 else ''}")
        return predictions.probs.numpy()

    def predict(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """int64 N: the most probable cluster of each image (arrays or file paths, as in fit)."""
        return self.predict_proba(X, batch_size).argmax(1).astype(np.int64)

    def save(self, path: str | Path) -> Path:
        """Write the fitted model (model.safetensors + model.json) to the folder `path`, which
        `scan.load(path)` and `scan predict path IMAGES...` read. Returns the folder."""
        from scan.checkpoint import RunDir
        from scan.stages.artifacts import final_step

        self.model_  # noqa: B018 - a clear error when not fitted
        source = self.run_dir_ if (self.run_dir_ / "model.json").is_file() else \
            RunDir(self.run_dir_).stage(final_step(RunDir(self.run_dir_)))
        folder = Path(path).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("model.safetensors", "model.json"):
                shutil.copyfile(source / name, folder / name)
        except OSError as err:
            raise ScanError(f"cannot save the model to {folder}: {err.strerror}") from None
        return folder


def load(path: str | Path, device: str = "auto") -> SCAN:
    """A fitted SCAN estimator from a run directory (its final step: self-label, else SCAN) or
    from a folder written by `SCAN.save` (model.safetensors + model.json)."""
    model = SCAN(preset=None, device=device)
    model._load(Path(path).expanduser())
    model.n_clusters = model.num_clusters
    return model
