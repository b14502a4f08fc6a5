"""Element-wise passes over whole parameter sets in flat chunks: cache-sized on CPU, launch-sized on accelerators.

Why not torch._foreach_*: each foreach op over a 100M-parameter model allocates a full-size temporary, and on CPU the
page faults of those fresh allocations cost more than the arithmetic (measured: EWC's penalty and gradient took
0.66 s a step as foreach ops, 0.08 s in 1 MiB chunks with reused buffers; bench/bench_method_hooks.py; chunks of
128K to 4M elements all take 81–91 ms, 16K–64K pay per-op overhead; bench/bench_optimizer.py --chunks). On an
accelerator there are no page faults (the caching allocator) but every op is a kernel launch: 1 MiB chunks of a
1B-parameter model would be ≈ 15,000 launches a step, so there the chunks are 64 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CHUNK = 1 << 18  # fp32 elements on CPU: 1 MiB, a few of them stay in cache while a chunk is worked on
DEVICE_CHUNK = 1 << 24  # fp32 elements on an accelerator: 64 MiB, ≈ 500 chunks (≈ 2,500 launches) for a 7B model


def chunk_size(device: torch.device) -> int:
    return CHUNK if device.type == "cpu" else DEVICE_CHUNK


def flat_chunks(*tensors: torch.Tensor, size: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Aligned 1-D views of at most `size` (default: chunk_size of their device) elements of same-numel contiguous
    tensors; writes to them reach the tensors."""
    size = size or chunk_size(tensors[0].device)
    flats = [t.view(-1) for t in tensors]  # raises on a non-contiguous tensor rather than writing to a copy
    n = flats[0].numel()
    for i in range(0, n, size):
        yield tuple(f[i : i + size] for f in flats)


class Scratch:
    """Reusable fp32 chunk buffers per device: `take(k, n, device)` returns k views of n elements."""

    def __init__(self) -> None:
        self.buffers: dict[torch.device, torch.Tensor] = {}

    def take(self, k: int, n: int, device: torch.device) -> list[torch.Tensor]:
        buf = self.buffers.get(device)
        if buf is None or buf.shape[0] < k or buf.shape[1] < n:
            buf = self.buffers[device] = torch.empty(k, max(n, chunk_size(device)), dtype=torch.float32,
                                                     device=device)  # fmt: skip
        return [buf[j, :n] for j in range(k)]
