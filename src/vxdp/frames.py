"""A batch of frames in one flat buffer: the unit every datapath stage hands to the next.

Ports, taps, virtqueues and engines exchange frames in batches, never one by
one, and the per-frame loops over a batch run in compiled code (numba). A batch
is therefore two numpy arrays that compiled code can take as they are: ``data``,
a 2-D ``uint8`` array of ``capacity`` slots of ``slot_size`` bytes, and
``lens``, the length of the frame in each slot. Slots have a fixed size so that
a slot's address is an index computation, and a batch is allocated once and
reused for the life of a queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_SLOT = 2048  # an MTU-sized frame plus virtio-net header, rounded to a power of two
DEFAULT_CAPACITY = 256


@dataclass
class FrameBatch:
    """``count`` frames: frame ``i`` is ``data[i, :lens[i]]``."""

    data: np.ndarray  # uint8[capacity, slot_size]
    lens: np.ndarray  # uint32[capacity]
    count: int = 0

    @classmethod
    def allocate(cls, capacity: int = DEFAULT_CAPACITY, slot_size: int = DEFAULT_SLOT) -> FrameBatch:
        return cls(np.zeros((capacity, slot_size), np.uint8), np.zeros(capacity, np.uint32))

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    @property
    def slot_size(self) -> int:
        return self.data.shape[1]

    def frame(self, i: int) -> bytes:
        """Frame ``i`` as bytes (control paths and tests; the datapath never copies out one by one)."""
        if not 0 <= i < self.count:
            raise IndexError(f"frame {i} of a batch of {self.count}")
        return self.data[i, : self.lens[i]].tobytes()

    def frames(self) -> list[bytes]:
        return [self.frame(i) for i in range(self.count)]

    def fill(self, frames: list[bytes]) -> None:
        """Put ``frames`` in the batch (control paths and tests); ValueError if they do not fit."""
        if len(frames) > self.capacity:
            raise ValueError(f"{len(frames)} frames do not fit a batch of {self.capacity}")
        for i, f in enumerate(frames):
            if len(f) > self.slot_size:
                raise ValueError(f"frame {i} of {len(f)} bytes exceeds the slot size {self.slot_size}")
            self.data[i, : len(f)] = np.frombuffer(f, np.uint8)
            self.lens[i] = len(f)
        self.count = len(frames)
