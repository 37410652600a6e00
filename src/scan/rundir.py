"""The life of a run directory: created with a marker, written under an exclusive lock, its
config and data identity recorded, and opened again by the commands that read it.

- A run directory holds `.scan-run` from the moment it is created. `scan` writes only into a
  folder that is new, empty, marked, or a run made before the marker existed (it has config.yaml,
  and gets the marker); any other existing folder is refused, so nothing of the user's is touched.
- One process writes a run at a time: `RUN/.lock` is held with flock(2) by the writer and names
  its pid. The kernel releases it when the process ends in any way, kill -9 included, so a lock
  left by a crash is simply taken over. The commands that write into a finished run (`evaluate`,
  `report`) take it too; `predict` only reads atomically written files, and warns.
- `data.json` records the identity of the images the stages were trained on; images that differ
  when a run continues rerun every stage (all of them are built from the data), with a line
  saying why.
- A command that fails before anything was recorded leaves no folder it created behind: the
  lock's release (when the RunDir is dropped, or at exit) removes it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import weakref
from pathlib import Path

import yaml

from scan.checkpoint import (STAGES, RunDir, is_run_dir, read_json, remove_stale_temps, save_json, save_text,
                             write_error)
from scan.config import RunConfig, config_diff, config_from_dict
from scan.console import echo, set_log_file
from scan.data.splits import ImageSplits
from scan.errors import ScanError
from scan.stages.artifacts import check_stage

# Keys that may change between invocations of one run without invalidating it.
RUNTIME_KEYS = ("device", "runtime.")
# What a run writes at its top level besides the stage folders; --force and changed data remove
# only these (and the stage folders), never anything else in the folder.
RUN_OUTPUTS = ("metrics.json", "assignments.csv", "report")
# Files a run holds before its config is recorded: a folder with nothing else is removed again
# when the command that created it fails.
BOOKKEEPING = frozenset({".scan-run", ".lock", "log.txt"})


class RunLock:
    """An exclusive flock on RUN/.lock, held while this object lives (and by the process: the
    kernel drops it on any exit). The file holds the holder's pid, for the error others see."""

    _held: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()

    def __init__(self, run: RunDir, fd: int, created: Path | None) -> None:
        weakref.finalize(self, _release, fd, run.root, created, os.getpid())

    @classmethod
    def acquire(cls, run: RunDir, created: Path | None = None) -> RunLock:
        """The run's lock for this process (shared with an earlier holder in this process); a
        ScanError naming the pid of another process that holds it. `created`: the first folder
        that was made for this run, removed again on release if nothing was recorded in it."""
        key = str(run.root.resolve())
        held = cls._held.get(key)
        if held is not None:
            return held
        try:
            fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(run.lock, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise ScanError(f"{run.root} is in use by another scan process (pid {holder}); wait for it to finish "
                            f"(or stop it), or use another run directory") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same; others see "pid unknown"
            pass
        lock = cls(run, fd, created)
        cls._held[key] = lock
        return lock


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def writer_pid(run: RunDir) -> str | None:
    """The pid of another process that holds the run's lock now, or None."""
    if not run.lock.is_file() or str(run.root.resolve()) in RunLock._held:
        return None
    try:
        fd = os.open(run.lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_pid(fd)
    finally:
        os.close(fd)


def _release(fd: int, root: Path, created: Path | None, pid: int) -> None:
    """Give the lock up (when the run's RunDir is gone, or at exit), first removing the folders
    made for the run if nothing but bookkeeping got into them: the command failed before its
    config was recorded (that happens once the data was read and checked)."""
    if created is not None and os.getpid() == pid:
        _remove_if_unused(root, created)
    os.close(fd)


def _remove_if_unused(root: Path, top: Path) -> None:
    """Remove `root` if it holds bookkeeping alone, and the empty folders above it up to `top`."""
    if not root.is_dir() or (root / "config.yaml").is_file():
        return
    if {p.name for p in root.iterdir()} <= BOOKKEEPING:
        shutil.rmtree(root, ignore_errors=True)
        folder = root
        while folder != top and not any(folder.parent.iterdir()):
            folder = folder.parent
            folder.rmdir()


def claim_folder(root: Path) -> Path | None:
    """Make `root` a run directory: create it (with its marker) or check that `scan` may write
    into it (new, empty, marked, or a run made before the marker), marking it when it is not yet.
    Returns the first folder this created (`root` or one above it), or None when it existed."""
    run = RunDir(root)
    if root.exists() and not root.is_dir():
        raise ScanError(f"--out {root} is a file, not a folder")
    if root.is_dir() and not is_run_dir(root) and any(root.iterdir()):
        raise ScanError(f"--out {root} is a folder that is not a scan run directory (no {run.marker.name} and no "
                        f"config.yaml) and is not empty; choose a new or empty folder, so none of its files are touched")
    created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScanError(f"cannot create --out {root}: {err.strerror}") from None
    if not os.access(root, os.W_OK):
        raise ScanError(f"cannot write to --out {root}: permission denied")
    if not run.marker.is_file():
        save_text("This folder is a scan run directory: scan writes into, and cleans, only folders holding this file.\n",
                  run.marker)
    return created


def open_run(cfg: RunConfig, out: str | Path | None, force: bool) -> RunDir:
    """Create or reopen the run directory for writing, under its lock; refuse a folder that is
    not a run, and one that holds another config unless forced. With `force`, finished stages
    whose files are damaged are removed, to be rebuilt. The config is written by `commit_config`,
    once the data has been checked against it."""
    run = RunDir(out if out is not None else Path("runs") / cfg.preset)
    run.lock_held = RunLock.acquire(run, created=claim_folder(run.root))
    remove_stale_temps([run.root, *(run.stage(s) for s in STAGES)])
    new = cfg.to_dict()
    old = _recorded_config(run, force)
    if old is not None:
        changes = [line for line in config_diff(old, new) if not line.startswith(RUNTIME_KEYS)]
        if changes and not force:
            raise ScanError(
                f"{run.root} holds a run with another config ({'; '.join(changes[:3])}"
                f"{'; ...' if len(changes) > 3 else ''}); pass --force to rerun the changed stages or choose another --out"
            )
    set_log_file(run.log)
    if force:
        remove_damaged_stages(run)
        _remove_damaged_data_record(run)
    return run


def _recorded_config(run: RunDir, force: bool) -> dict | None:
    """The run's recorded config, filled with today's defaults (so keys added since that run was
    made are not a change); None for a new run, and with `force` for a damaged config.yaml, which
    this command's config then replaces (each stage's fingerprint still decides what reruns)."""
    if not run.config.is_file():
        return None
    try:
        return read_config(run).to_dict()
    except ScanError as err:
        if not force:
            raise
        echo(f"{str(err).split('; ')[0]}; replacing it with this command's config (--force)")
        return None


def remove_damaged_stages(run: RunDir) -> None:
    """Remove the folder of each stage with a file that cannot be read back (and what came after
    it), so that the stage is rebuilt."""
    for i, stage in enumerate(STAGES):
        if not run.stage(stage).is_dir():
            continue
        try:
            check_stage(run, stage)
        except ScanError as err:
            echo(f"{stage}: {err}".removesuffix(f"; rerun with --force to rebuild the {stage} stage")
                 + "; rebuilding it")
            for later in STAGES[i:]:
                shutil.rmtree(run.stage(later), ignore_errors=True)
            return


def _remove_damaged_data_record(run: RunDir) -> None:
    """Forget a damaged data.json: `commit_config` records the images the run reads now."""
    if not run.data.is_file():
        return
    try:
        read_json(run.data)
    except ScanError as err:
        echo(f"data: {str(err).split('; ')[0]}; recording the images read now (--force)")
        run.data.unlink()


def remove_outputs(run: RunDir, stages: tuple[str, ...] = STAGES) -> None:
    """Delete what the run wrote for `stages` and from them (metrics, report, assignments); the
    run's config, log and any other file in the folder stay."""
    for stage in stages:
        shutil.rmtree(run.stage(stage), ignore_errors=True)
    for name in RUN_OUTPUTS:
        path = run.root / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def commit_config(run: RunDir, cfg: RunConfig, data: ImageSplits | None = None) -> None:
    """Record the resolved config as the run's own (RUN/config.yaml), the identity of its data
    (RUN/data.json: images that changed since rerun every stage) and the files the data source
    skipped as unreadable (RUN/skipped.txt)."""
    if data is not None:
        identity = data.identity()
        change = data_change(run, identity)
        if change:
            echo(f"data: {change}; rerunning every stage")
            remove_outputs(run)
        save_json(identity, run.data)
    save_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), run.config)
    if data is not None and data.skipped:
        save_text("".join(f"{path}\n" for path in data.skipped), run.root / "skipped.txt")


def data_change(run: RunDir, identity: dict) -> str | None:
    """How the images differ from those the run's stages were built from, or None (also when the
    run recorded none: made before data.json existed, or imported)."""
    if not run.data.is_file():
        return None
    old = read_json(run.data)
    if not isinstance(old, dict) or old == identity:
        return None if old == identity else "the run's data.json is damaged"
    counts = [f"{old.get(s)} -> {identity[s]} {s}" for s in ("train", "test") if old.get(s) != identity[s]]
    what = f"{', '.join(counts)} images" if counts else "the same number of images, other pixels"
    return f"the images differ from those this run was built from ({what})"


def check_data(run: RunDir, data: ImageSplits) -> None:
    """Refuse to read a run's outputs against images that differ from those it was built from."""
    change = data_change(run, data.identity())
    if change:
        raise ScanError(f"{run.root}: {change}; run `scan run` on it again to rebuild it from these images")


def read_config(run: RunDir) -> RunConfig:
    """The resolved config stored in an existing run directory."""
    if not run.config.is_file():
        raise ScanError(f"{run.root} is not a run directory (no config.yaml)")
    try:
        values = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise _damaged_config(run, f"not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise _damaged_config(run, "not a mapping of config sections")
    try:
        return config_from_dict(values)
    except ScanError as err:
        raise _damaged_config(run, str(err)) from None


def _damaged_config(run: RunDir, reason: str) -> ScanError:
    return ScanError(f"{run.config} is damaged ({reason}); rerun `scan run` with --force and the run's "
                     f"preset and options to replace it")


def open_existing(path: str | Path) -> tuple[RunDir, RunConfig]:
    """A finished or running run directory for a command that writes into it (`evaluate`,
    `report`): its config, under its lock."""
    run = RunDir(Path(path))
    if not run.root.is_dir():
        raise ScanError(f"{path}: no such run directory")
    cfg = read_config(run)
    run.lock_held = RunLock.acquire(run)
    return run, cfg


def warn_if_written(run: RunDir) -> None:
    """A warning when another process is writing the run that is being read."""
    pid = writer_pid(run)
    if pid is not None:
        print(f"scan: warning: {run.root} is being written by another scan process (pid {pid}); "
              f"reading the files it has finished so far", file=sys.stderr)
