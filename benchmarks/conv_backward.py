"""Forward and backward time of each convolution of the `digits` preset's small CNN, alone, on the
CPU: where its training step spends its time, for each precision and memory format.

Each Conv2d of `small_cnn` (1 grey channel, 8×8 input) is timed on its own input shape (found by
one forward pass with hooks) at the pretext step's batch (2 views × 256 images = 512): the median
over windows (`stages.timed`) of a forward pass, and of a forward plus backward pass (gradients of weights
and inputs, except for the first layer, whose input needs none). backward_ms is their difference.
bf16 runs the layer in bfloat16 (as autocast does); channels-last converts layer and input.

Prints one JSON line for the machine, then one per (layer, precision, memory format). Usage:

    python benchmarks/conv_backward.py [--batch 512] [--windows 5]
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Callable

import torch
import torch.nn as nn

from scan.models.backbones import build_backbone
from scan.training.context import native_bf16_cpu_feature

from quality import cpu_name  # benchmarks/quality.py, beside this script
from stages import timed  # benchmarks/stages.py, beside this script

STEPS, WINDOW_S = 1000, 0.5  # a timing window: about half a second, at most 1,000 calls


def conv_inputs(batch: int) -> list[tuple[nn.Conv2d, torch.Size]]:
    """Each Conv2d of the digits backbone with the shape of its input at this batch."""
    net = build_backbone("small_cnn", 1).eval()
    found: list[tuple[nn.Conv2d, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda mod, args, _: found.append((mod, args[0].shape)))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.randn(batch, 1, 8, 8))
    for h in hooks:
        h.remove()
    return found


def median_ms(step: Callable[[], float], windows: int) -> float:
    """Median milliseconds per call of `step` (stages.py's timing harness on the CPU: 3 warm-up
    calls, then `windows` windows of up to STEPS calls, about WINDOW_S seconds each)."""
    return timed(step, torch.device("cpu"), warmup=3, windows=windows, window_s=WINDOW_S, max_steps=STEPS)["step_s"] * 1000


def time_layer(conv: nn.Conv2d, shape: torch.Size, dtype: torch.dtype, channels_last: bool,
               windows: int) -> dict[str, float]:
    """forward_ms and backward_ms of a copy of `conv` on a random input of `shape`."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layer = copy.deepcopy(conv).to(dtype=dtype, memory_format=fmt)
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(conv.in_channels > 1)
    grad = torch.randn_like(layer(x))

    # Each returns the seconds it spent augmenting, as stages.timed's steps do: none.
    def forward() -> float:
        with torch.no_grad():
            layer(x)
        return 0.0

    def forward_backward() -> float:
        layer(x).backward(grad)
        return 0.0

    fwd = median_ms(forward, windows)
    return {"forward_ms": round(fwd, 3), "backward_ms": round(median_ms(forward_backward, windows) - fwd, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--windows", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(json.dumps({"benchmark": "machine", "cpu": cpu_name(), "native_bf16": native_bf16_cpu_feature(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
    for i, (conv, shape) in enumerate(conv_inputs(args.batch)):
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                times = time_layer(conv, shape, dtype, channels_last, args.windows)
                print(json.dumps({"benchmark": "conv_backward", "layer": i, "input": list(shape),
                                  "out_channels": conv.out_channels, "precision": str(dtype).removeprefix("torch."),
                                  "channels_last": channels_last, **times,
                                  "backward_per_forward": round(times["backward_ms"] / times["forward_ms"], 2)}),
                      flush=True)


if __name__ == "__main__":
    main()
