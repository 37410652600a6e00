"""The one table of stages: their order, what each reads, which config values its outputs depend
on, and its entry point. The CLI, the pipeline, fingerprints and the checks that a stage's input
is there all read it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StageSpec:
    """name: the stage (and its folder in the run directory).
    requires: the stage whose outputs it reads (None for the first).
    inputs: config keys (sections or dotted keys) its outputs depend on; a finished stage is reused
        only while these are unchanged.
    entry: "module:function" of `run_<stage>(ctx, cfg, run, data) -> summary dict`, imported when run.
    """

    name: str
    requires: str | None
    inputs: tuple[str, ...]
    entry: str

    def function(self) -> Callable:
        module, name = self.entry.split(":")
        return getattr(importlib.import_module(module), name)


STAGE_TABLE: tuple[StageSpec, ...] = (
    StageSpec("pretext", None, ("seed", "data", "pretext"), "scan.stages.pretext:run_pretext"),
    StageSpec("mine", "pretext", ("seed", "data", "pretext", "mine", "cluster.select_on"), "scan.stages.mine:run_mine"),
    StageSpec("cluster", "mine", ("seed", "data", "pretext", "mine", "cluster", "clusters"),
              "scan.stages.cluster:run_cluster"),
    StageSpec("selflabel", "cluster", ("seed", "data", "pretext", "mine", "cluster", "clusters", "selflabel"),
              "scan.stages.selflabel:run_selflabel"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE)


def stage_spec(name: str) -> StageSpec:
    """The table entry of stage `name`."""
    return STAGE_TABLE[STAGE_NAMES.index(name)]
