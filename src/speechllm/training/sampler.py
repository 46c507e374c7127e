"""Resumable batches: an endless, shardable, length-bucketed sampler of dataset indices."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

import numpy as np

from speechllm.training.distributed import rank_and_world

T = TypeVar("T")


class ResumableSampler:
    """Endless batches of dataset indices, epoch after epoch, resumable at any batch.

    `batch_size` is the global batch of one micro-step: with W processes, each rank yields its
    shard `batch[rank::W]` (so it must divide by W, and a short last batch is padded with indices
    from the start of the epoch). Epoch e is a pure function of `(seed, e)`, independent of the
    global RNGs. With `bucket_by` (one length per item) items are sorted by length inside windows
    of `bucket_batches` batches, cut into batches, and the batch order shuffled: batches hold
    similar lengths (less padding) and the epoch stays random.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        *,
        bucket_by: list[int] | None = None,
        bucket_batches: int = 50,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        dist_rank, dist_world = rank_and_world()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        if dataset_len < 1 or batch_size < 1 or bucket_batches < 1:
            raise ValueError(
                f"dataset_len, batch_size and bucket_batches must be >= 1, got {dataset_len}, {batch_size}, "
                f"{bucket_batches}"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if batch_size % self.world_size:
            raise ValueError(f"batch_size must divide by world_size ({self.world_size}), got {batch_size}")
        if drop_last and dataset_len < batch_size:
            raise ValueError(f"drop_last=True with dataset_len {dataset_len} < batch_size {batch_size} yields nothing")
        if bucket_by is not None and len(bucket_by) != dataset_len:
            raise ValueError(f"bucket_by must hold dataset_len ({dataset_len}) lengths, got {len(bucket_by)}")
        self.dataset_len, self.batch_size, self.seed = dataset_len, batch_size, seed
        self.shuffle, self.drop_last, self.bucket_batches = shuffle, drop_last, bucket_batches
        self.lengths = None if bucket_by is None else np.asarray(bucket_by, dtype=np.int64)
        self.epoch = 0
        self.position = 0  # global batches of the current epoch already handed out

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch`, in order (before sharding over ranks)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.dataset_len) if self.shuffle else np.arange(self.dataset_len)
        if self.lengths is not None:
            if self.shuffle:
                window = self.batch_size * self.bucket_batches
                chunks = [order[i : i + window] for i in range(0, len(order), window)]
                order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
            else:
                order = np.argsort(self.lengths, kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [self._pad(b.tolist(), order) for b in batches]

    def _pad(self, batch: list[int], order: np.ndarray) -> list[int]:
        short = -len(batch) % self.world_size
        return batch + [int(i) for i in order[:short]]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.position < len(batches):
                batch = batches[self.position]
                self.position += 1
                yield batch[self.rank :: self.world_size]
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "dataset_len": self.dataset_len,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key in ("seed", "dataset_len", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]}, this sampler has {getattr(self, key)}"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class Batches(Generic[T]):
    """`make_batch(indices)` for every index list of a sampler; resumable through the sampler."""

    def __init__(self, sampler: ResumableSampler, make_batch: Callable[[list[int]], T]) -> None:
        self.sampler, self.make_batch = sampler, make_batch

    def __iter__(self) -> Iterator[T]:
        for indices in self.sampler:
            yield self.make_batch(indices)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.load_state_dict(state)
