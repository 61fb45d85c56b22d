"""Device values the host needs later, fetched without stalling the per-frame step.

`.item()`, `.tolist()` or `.cpu()` on a CUDA tensor waits for every kernel queued so far;
the GPU then idles while the host queues the next frame's work. The engine instead starts
a non-blocking copy into pinned host memory with an event behind it (`HostCopy`) and
reads it a frame later (memory decisions) or on a writer thread (result PNGs), when the
copy is normally long done. On the CPU the tensor itself is kept: nothing is in flight.
"""
from __future__ import annotations

import torch


class HostCopy:
    """tensor's value on the host; `get()` waits for this copy only, not for later work."""

    def __init__(self, tensor: torch.Tensor):
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            stream = torch.cuda.current_stream(tensor.device)  # the stream the copy went on
            self._event = torch.cuda.Event()
            self._event.record(stream)  # right behind the copy
        else:
            self._host, self._event = tensor, None

    def get(self) -> torch.Tensor:
        """The value as a CPU tensor."""
        if self._event is not None:
            self._event.synchronize()
        return self._host


class Decision:
    """A yes/no the host needs: decided at once (a bool) or by a 0-dim device bool read later."""

    def __init__(self, flag: bool | torch.Tensor):
        self._flag = flag if isinstance(flag, bool) else HostCopy(flag)

    def get(self) -> bool:
        if isinstance(self._flag, bool):
            return self._flag
        return bool(self._flag.get())


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without stalling: a plain copy from pageable memory makes
    PyTorch synchronise the stream, so CUDA copies go through pinned memory, non-blocking."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
