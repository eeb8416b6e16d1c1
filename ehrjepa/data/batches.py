"""Token-budget batches: as many samples per batch as fit a budget of (padded) tokens.

Variable-length samples (whole-stay crops) batched by count would pad every batch to a long
stay. Here a batch holds samples of similar length, and as many of them as keep
`batch samples x longest sample <= tokens` (the tokens a padded step computes), so the batch
size in samples varies and the padded fraction stays small.

One epoch, from a generator seeded by (seed, epoch) alone, identical on every rank:
1. shuffle all samples;
2. cut the shuffled order into pools of about `pool_batches` batches' worth of tokens and sort
   each pool by length (longest first): the length bucketing;
3. cut each sorted pool greedily into batches under the budget;
4. with N ranks, split the batches with the most samples in two until their count is a
   multiple of N, so that every rank gets as many batches and no sample is dropped (a half
   batch is still under the budget; only an epoch with too few samples to split drops its last
   batches, as DistributedSampler's drop_last would);
5. shuffle the batches and deal them out: rank r takes batches r, r + N, r + 2N, ...
Every sample is in exactly one batch of the epoch, on exactly one rank. Exact resume:
`set_position(epoch, skip)` starts this rank's epoch after its first `skip` batches.
"""
from __future__ import annotations

import numpy as np


def budget_batches(lengths: np.ndarray, tokens: int, rng: np.random.Generator,
                   pool_batches: int = 32) -> list[np.ndarray]:
    """Steps 1-3 above: sample indices grouped into batches with len(batch) x max length <= tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > tokens:
        raise ValueError(f"token budget {tokens} is smaller than the longest sample "
                         f"({int(lengths.max())} hours)")
    order = rng.permutation(len(lengths))
    mean = float(lengths.mean()) if len(lengths) else 1.0
    pool = max(1, int(pool_batches * tokens / mean))
    batches = []
    for p in range(0, len(order), pool):
        chunk = order[p:p + pool]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        begin = 0
        while begin < len(chunk):
            longest = int(lengths[chunk[begin]])  # sorted: the first is the longest
            count = max(1, tokens // longest)
            batches.append(chunk[begin:begin + count])
            begin += count
    return batches


def share_evenly(batches: list[np.ndarray], num_replicas: int) -> list[np.ndarray]:
    """Step 4 above: `batches` with the largest ones halved until their count is a multiple of
    `num_replicas` (each half keeps the sorted order, so its padding stays small); when there
    are not enough samples for that, the last batches are dropped instead."""
    batches = list(batches)
    short = -len(batches) % num_replicas
    if short > sum(len(b) - 1 for b in batches):
        return batches[:len(batches) - len(batches) % num_replicas]
    for _ in range(short):
        i = max(range(len(batches)), key=lambda j: len(batches[j]))  # the first of the largest
        half = (len(batches[i]) + 1) // 2
        batches[i:i + 1] = [batches[i][:half], batches[i][half:]]
    return batches


class TokenBudgetBatchSampler:
    """DataLoader batch_sampler of token-budget batches for one rank (see the module docstring).

    `lengths`: hours of every sample of the dataset; `tokens`: this rank's budget of padded
    tokens per batch (the global `data.tokens_per_batch` / number of processes)."""

    def __init__(self, lengths, tokens: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 pool_batches: int = 32):
        if tokens < 1:
            raise ValueError(f"tokens per batch must be >= 1, got {tokens}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.tokens = int(tokens)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.pool_batches = int(pool_batches)
        self.epoch = 0
        self.skip = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_position(self, epoch: int, skip: int) -> None:
        """Start `epoch` after this rank's first `skip` batches."""
        self.set_epoch(epoch)
        self.skip = int(skip)

    def epoch_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """This rank's batches of an epoch (all of them, before any skip)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        batches = budget_batches(self.lengths, self.tokens, rng, self.pool_batches)
        batches = share_evenly(batches, self.num_replicas)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        mine = batches[self.rank::self.num_replicas]
        self._cache = (epoch, mine)
        return mine

    def __iter__(self):
        for batch in self.epoch_batches()[self.skip:]:
            yield batch.tolist()

    def __len__(self) -> int:
        return max(0, len(self.epoch_batches()) - self.skip)


def padded_fraction(batches: list[np.ndarray], lengths: np.ndarray) -> float:
    """Padding / (padded tokens) over `batches`, each padded to its longest sample."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    return 1.0 - real / padded if padded else 0.0
