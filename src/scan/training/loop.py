"""The one training loop every training stage runs (`fit`), and the state it resumes from.

A stage supplies its step (batch -> losses) and what happens after an epoch (validation,
selection, saving); the loop owns the rest: learning rate, backward and optimiser step, the
non-finite check (collective, so no rank is left waiting), progress, history and the per-epoch
checkpoint with every rank's random streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn

from scan.checkpoint import RunDir, damaged, load_torch, rewrite_jsonl, save_torch
from scan.console import echo, stage_progress
from scan.errors import ScanError
from scan.training.context import RunContext
from scan.training.optim import set_lr

# What a step returns: named scalar tensors, "loss" being the one to minimise; None skips the
# step on every rank (the stage decides collectively, e.g. no confident sample in the global batch).
StepResult = dict[str, torch.Tensor] | None


@dataclass
class TrainState:
    """A stage's training state that survives interruption: restored from and saved to
    RUN/<stage>/checkpoint.pt once per epoch, with every rank's random streams, so a resumed run
    continues exactly as an uninterrupted one.

    modules: what is saved and restored by name; fit trains modules["model"] with
    modules["optimizer"] (a stage may replace both between epochs, e.g. for a restart).
    extra: stage-specific values kept across epochs (the best validation loss so far, ...).
    """

    run: RunDir
    stage: str
    fingerprint: str
    config: dict[str, Any]
    modules: dict[str, nn.Module | torch.optim.Optimizer]
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def restore(self, ctx: RunContext) -> bool:
        """Load the checkpoint if one exists for this config; True when resumed."""
        path = self.run.checkpoint(self.stage)
        if not path.is_file():
            return False
        state = load_torch(path)
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return False
        try:
            for name, module in self.modules.items():
                module.load_state_dict(state[name])
            self.epoch, self.history, self.extra = state["epoch"], state["history"], state["extra"]
            streams = state["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise damaged(path, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
        if len(streams) != ctx.world_size:
            raise ScanError(f"{path} was written by {len(streams)} process(es); resume it with as many "
                            f"(or rerun the {self.stage} stage with --force)")
        ctx.set_rng_state(streams[ctx.rank])
        return True

    def save(self, ctx: RunContext) -> None:
        """Checkpoint after a finished epoch (rank 0 writes, atomically) and rewrite history.jsonl
        to match."""
        streams = ctx.dist.all_objects(ctx.rng_state())
        if not ctx.is_main:
            return
        state = {name: module.state_dict() for name, module in self.modules.items()}
        state.update(epoch=self.epoch, history=self.history, extra=self.extra, fingerprint=self.fingerprint,
                     config=self.config, rng=streams)
        save_torch(state, self.run.checkpoint(self.stage))
        rewrite_jsonl(self.history, self.run.history(self.stage))


def train_step(ctx: RunContext, step: Callable[[Any], StepResult], optimizer: torch.optim.Optimizer, batch: Any,
               stage: str, epoch: int = 0) -> tuple[list[str], torch.Tensor] | None:
    """One optimiser step on `batch`: the stage's losses, checked for non-finite values on every
    rank at once, then backward and step. Returns the names of the step's values and their means
    over ranks (a tensor), or None when the stage skipped the batch."""
    losses = step(batch)
    if losses is None:
        return None
    names = list(losses)
    values = ctx.dist.sum_(torch.stack([v.detach().float() for v in losses.values()])) / ctx.world_size
    if not torch.isfinite(values).all():
        bad = ", ".join(f"{k} {v:.4g}" for k, v in zip(names, values.tolist()))
        raise ScanError(f"{stage}: non-finite loss ({bad}) in epoch {epoch + 1}; stopped, last good checkpoint kept "
                        "(try a lower learning rate)")
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return names, values


def fit(
    ctx: RunContext,
    state: TrainState,
    *,
    epochs: int,
    steps: int,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[Any], StepResult],
    lrs: Sequence[float] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    after_step: Callable[[], None] | None = None,
    on_epoch_end: Callable[[int], dict[str, Any]] | None = None,
    describe: Callable[[dict[str, Any]], str] | None = None,
) -> None:
    """Train from state.epoch to `epochs`.

    batches(epoch): this rank's batches of the epoch (about `steps` of them, for the progress bar).
    step(batch): the losses of one batch (see StepResult), computed in train mode with gradients.
    lrs: the learning rate of each epoch (precomputed), or None to leave the optimiser's own.
    on_epoch_start(epoch): before the epoch (default: modules["model"].train()).
    after_step(): after each optimiser step (e.g. an EMA update).
    on_epoch_end(epoch): after the epoch, on every rank; returns values for the history record
        (the same on every rank). describe(record) adds to the printed epoch line.
    The history record of an epoch holds its number, the mean of each step value over the steps
    taken, the number of skipped steps, the learning rate and its wall time.
    """
    bar = stage_progress(state.stage, epochs * steps, state.epoch * steps) if ctx.is_main else None
    for epoch in range(state.epoch, epochs):
        start = time.perf_counter()
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        else:
            state.modules["model"].train()
        optimizer = state.modules["optimizer"]
        if lrs is not None:
            set_lr(optimizer, lrs[epoch])
        sums: torch.Tensor | None = None
        names: list[str] = []
        taken = skipped = 0
        for batch in batches(epoch):
            done = train_step(ctx, step, optimizer, batch, state.stage, epoch)
            if bar is not None:
                bar.update()
            if done is None:
                skipped += 1
                continue
            names, values = done
            if after_step is not None:
                after_step()
            sums = values if sums is None else sums + values
            taken += 1
        record: dict[str, Any] = {"epoch": epoch + 1}
        if sums is not None:
            record.update(zip(names, (sums / taken).tolist()))
        record["skipped_steps"] = skipped
        if lrs is not None:
            record["lr"] = lrs[epoch]
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch))
        record["seconds"] = time.perf_counter() - start
        state.history.append(record)
        state.epoch = epoch + 1
        state.save(ctx)
        loss = f"loss {record['loss']:.4f}" if "loss" in record else "no step taken"
        extra = f"  {describe(record)}" if describe is not None else ""
        skips = f"  skipped {skipped}/{skipped + taken}" if skipped else ""
        if bar is not None:
            bar.clear()
        echo(f"{state.stage} {epoch + 1}/{epochs}  {loss}{extra}{skips}  {record['seconds']:.1f}s")
    if bar is not None:
        bar.close()
