"""Timing training steps without making the device wait (the benchmark and the dry runs)."""

from __future__ import annotations

import time
from typing import Any

import torch


class StepClock:
    """Step boundaries that do not wait for the device: CUDA events recorded in the stream and read once after
    the run; on a CPU, where an operation has finished when it returns, host timestamps."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]
