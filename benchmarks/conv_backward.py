"""Forward and backward time of each convolution of the `digits` preset's small CNN, alone, on the
CPU: where its training step spends its time, for each precision and memory format.

Each Conv2d of `small_cnn` (1 grey channel, 8×8 input) is timed on its own input shape (found by
one forward pass with hooks) at the pretext step's batch (2 views × 256 images = 512): the median
of several windows of a forward pass, and of a forward plus backward pass (gradients of weights
and inputs, except for the first layer, whose input needs none). backward_ms is their difference.
bf16 runs the layer in bfloat16 (as autocast does); channels-last converts layer and input.

Prints one JSON line for the machine, then one per (layer, precision, memory format). Usage:

    python benchmarks/conv_backward.py [--batch 512] [--windows 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

from scan.models.backbones import build_backbone
from scan.training.context import native_bf16_cpu_feature

from quality import cpu_name  # benchmarks/quality.py, beside this script


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


def median_ms(fn, windows: int, steps: int = 10) -> float:
    """Median over `windows` of the mean time of `steps` calls, after 3 warm-up calls, in ms."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(times)


def time_layer(conv: nn.Conv2d, shape: torch.Size, dtype: torch.dtype, channels_last: bool,
               windows: int) -> dict[str, float]:
    """forward_ms and backward_ms of one copy of `conv` on a random input of `shape`."""
    layer = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                      bias=conv.bias is not None).to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layer = layer.to(memory_format=fmt)
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(conv.in_channels > 1)
    grad = torch.randn_like(layer(x))

    def forward() -> None:
        with torch.no_grad():
            layer(x)

    def forward_backward() -> None:
        layer(x).backward(grad)

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
