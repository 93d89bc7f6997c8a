"""Deterministic splits of a source's train set: validation, labeled, unlabeled.

Everything here is a pure function of the bundle, the sizes and ``split_seed``:
the same arguments always give the same rows, on any machine, and a different
seed gives different ones. Subsets are stratified by class and *nested*: for one
seed, a smaller labeled set is contained in a larger one, so growing a label
budget adds samples instead of swapping them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .types import DataBundle, DataInfo, ImageSet


def derive_seed(seed: int, *salt: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``salt`` (stable across processes and machines)."""
    text = ":".join(str(s) for s in (seed, *salt)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@dataclass
class UnlabeledSet:
    """Train images whose labels methods must not see.

    ``images`` is uint8 ``[N, C, H, W]`` (another modality's: ``[N, ...]``); ``index`` holds each row's position
    in the source's train set. There is deliberately no ``labels`` attribute:
    the true labels stay in ``_hidden_labels`` and are reached only through
    ``Splits.reveal_labels`` for diagnostics (pseudo-label precision and the like).
    """

    images: torch.Tensor
    index: torch.Tensor
    _hidden_labels: torch.Tensor = field(repr=False)

    def __post_init__(self):
        if self.images.ndim < 2:  # the data's modality checked the form of its examples
            raise ValueError(f"examples must be [N, ...] with N rows, got {tuple(self.images.shape)}")
        n = len(self.images)
        if self.index.shape != (n,) or self._hidden_labels.shape != (n,):
            raise ValueError(f"index and labels must be [N={n}]")
        self.index = self.index.long()
        self._hidden_labels = self._hidden_labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: torch.Tensor) -> UnlabeledSet:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return UnlabeledSet(self.images[rows], self.index[rows], self._hidden_labels[rows])


@dataclass(frozen=True)
class UnlabeledImages:
    """The unlabeled split as methods see it: images and their source rows, no labels at all."""

    images: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: torch.Tensor) -> UnlabeledImages:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return UnlabeledImages(self.images[rows], self.index[rows])


@dataclass(frozen=True)
class StageData:
    """The splits handed to methods: the unlabeled split's labels are not in it."""

    labeled: ImageSet
    val: ImageSet
    test: ImageSet
    unlabeled: UnlabeledImages
    info: DataInfo


@dataclass
class Splits:
    """The sets a stage works with, all cut from one ``DataBundle``.

    * ``labeled``: train rows methods may use with their labels;
    * ``val``: a stratified holdout of the train set, for model selection;
    * ``test``: the source's test set (optionally a stratified subset);
    * ``unlabeled``: the train rows left over when ``labeled_per_class`` is set,
      labels hidden (empty otherwise).

    ``index`` of every set holds rows of the source's train (or test) set.
    """

    labeled: ImageSet
    val: ImageSet
    test: ImageSet
    unlabeled: UnlabeledSet
    info: DataInfo
    # Sorted source train indices and their labels, for reveal_labels only.
    _train_index: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _train_labels: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def for_methods(self) -> StageData:
        """What a method may see: everything but the unlabeled split's labels."""
        unlabeled = UnlabeledImages(self.unlabeled.images, self.unlabeled.index)
        return StageData(self.labeled, self.val, self.test, unlabeled, self.info)

    def reveal_labels(self, index: torch.Tensor) -> torch.Tensor:
        """True labels of source train rows ``index`` (e.g. ``unlabeled.index``).

        For diagnostics only (pseudo-label precision); a method that trains on
        these labels is no longer semi-supervised.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        if self._train_index is None:  # built by hand: the unlabeled set is all we know
            order = torch.argsort(self.unlabeled.index)
            known, labels = self.unlabeled.index[order], self.unlabeled._hidden_labels[order]
        else:
            known, labels = self._train_index, self._train_labels
        flat = index.reshape(-1).cpu()
        pos = torch.searchsorted(known, flat).clamp_max(max(len(known) - 1, 0))
        if len(known) == 0 or not bool((known[pos] == flat).all()):
            missing = flat[known[pos] != flat] if len(known) else flat
            raise KeyError(f"not rows of the train set: {missing[:10].tolist()}")
        return labels[pos].reshape(index.shape).to(index.device)


def _class_counts(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    classes, counts = torch.unique(labels, return_counts=True)
    return classes, counts


def _shares(capacity: torch.Tensor, n_total: int, order: torch.Tensor) -> torch.Tensor:
    """Split ``n_total`` among classes as evenly as ``capacity`` allows (water-filling).

    Every class gets ``min(capacity, level)`` and the remainder goes one each to
    the next classes in ``order`` that still have room. Each class's share never
    decreases as ``n_total`` grows, which is what makes subsets nested.
    """
    lo, hi = 0, int(capacity.max()) if len(capacity) else 0
    while lo < hi:  # largest level with sum(min(capacity, level)) <= n_total
        mid = (lo + hi + 1) // 2
        if int(capacity.clamp_max(mid).sum()) <= n_total:
            lo = mid
        else:
            hi = mid - 1
    shares = capacity.clamp_max(lo)
    remainder = n_total - int(shares.sum())
    for k in order.tolist():
        if remainder == 0:
            break
        if capacity[k] > lo:
            shares[k] += 1
            remainder -= 1
    return shares


def balanced_subset(labels: torch.Tensor, n_total: int, seed: int) -> torch.Tensor:
    """Sorted row indices of a class-stratified subset of ``n_total`` rows.

    Per class, the rows are put in a random order drawn from ``seed`` (which
    does not depend on ``n_total``) and a prefix is taken; prefix lengths differ
    by at most one between classes unless a class runs out of rows, in which
    case the others make up the difference. So for one seed the subsets are
    nested: ``balanced_subset(y, 100 * C, s)`` is a subset of
    ``balanced_subset(y, 1000 * C, s)``.
    """
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if n_total < 0:
        raise ValueError(f"subset size must be >= 0, got {n_total}")
    if n_total > len(labels):
        raise ValueError(f"cannot take {n_total} rows from a set of {len(labels)}")
    if n_total == 0:
        return torch.empty(0, dtype=torch.long)
    classes, counts = _class_counts(labels)
    g = torch.Generator().manual_seed(derive_seed(seed, "balanced_subset"))
    class_order = torch.randperm(len(classes), generator=g)  # who gets the remainder first
    rows_by_class = []
    for c in classes.tolist():
        rows = torch.nonzero(labels == c).reshape(-1)
        rows_by_class.append(rows[torch.randperm(len(rows), generator=g)])
    shares = _shares(counts, n_total, class_order)
    picked = [rows[: int(k)] for rows, k in zip(rows_by_class, shares, strict=True)]
    return torch.sort(torch.cat(picked)).values


def _complement(n: int, rows: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    return torch.nonzero(keep).reshape(-1)


class SplitError(ValueError):
    """A split size the data cannot give; ``field`` is its key under ``data:`` (for a located error)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


AUTO_VAL_FRACTION, AUTO_VAL_MAX = 0.1, 5000


def validation_rows(val_size: int | float | str, n: int) -> int:
    """How many of ``n`` train rows ``data.val_size`` holds out: a number of rows as it is, a fraction of
    ``n`` (rounded), or ``auto``: 10% of ``n``, at most 5,000 (Fashion-MNIST's 60,000: 5,000)."""
    if val_size == "auto":
        return min(AUTO_VAL_MAX, round(AUTO_VAL_FRACTION * n))
    if isinstance(val_size, float):
        return round(val_size * n)
    return int(val_size)


def make_splits(bundle: DataBundle, *, val_size: int, labeled_per_class: int | None,
                split_seed: int, test_size: int | None = None) -> Splits:
    """Cut validation, labeled and unlabeled sets from ``bundle.train``.

    * ``val``: ``val_size`` stratified train rows (0: an empty set);
    * ``labeled``: all other train rows, or exactly ``labeled_per_class`` rows
      per class of them (ValueError if a class has fewer), the rest going to
      ``unlabeled`` with labels hidden;
    * ``test``: the source's test set, or a stratified subset of ``test_size`` rows.

    The validation rows do not depend on ``labeled_per_class``, and for one
    seed a smaller labeled set is contained in a larger one.
    """
    train, info = bundle.train, bundle.info
    n = len(train)
    if val_size < 0:
        raise SplitError("val_size", f"must be >= 0, got {val_size}")
    if val_size >= n > 0:
        raise SplitError("val_size", f"{val_size} leaves no training rows (the train set has {n}): give fewer "
                         "rows, or a fraction (val_size: 0.1) that fits any size")
    val_rows = balanced_subset(train.labels, val_size, derive_seed(split_seed, "val"))
    rest = _complement(n, val_rows)

    if labeled_per_class is None:
        labeled_rows, unlabeled_rows = rest, torch.empty(0, dtype=torch.long)
    else:
        if labeled_per_class < 1:
            raise SplitError("labeled_per_class", f"must be >= 1, got {labeled_per_class}")
        rest_labels = train.labels[rest]
        num_classes = max(info.num_classes, int(train.labels.max()) + 1 if n else 0)
        counts = torch.bincount(rest_labels, minlength=num_classes)
        short = [(c, int(counts[c])) for c in range(num_classes) if counts[c] < labeled_per_class]
        if short:
            names = info.class_names
            detail = ", ".join(
                f"{names[c] if c < len(names) else c} has {k}" for c, k in short[:10]
            )
            raise SplitError(
                "labeled_per_class", f"{labeled_per_class} but after taking {val_size} validation "
                f"rows some classes have fewer train rows: {detail}. Lower labeled_per_class "
                "or val_size."
            )
        picked = balanced_subset(rest_labels, labeled_per_class * num_classes,
                                 derive_seed(split_seed, "labeled"))
        labeled_rows = rest[picked]
        unlabeled_rows = rest[_complement(len(rest), picked)]

    test = bundle.test
    if test_size is not None:
        if test_size > len(test):
            raise SplitError("test_size", f"{test_size} but the test set has {len(test)} rows")
        test = test.subset(balanced_subset(test.labels, test_size, derive_seed(split_seed, "test")))

    order = torch.argsort(train.index)
    return Splits(
        labeled=train.subset(labeled_rows),
        val=train.subset(val_rows),
        test=test,
        unlabeled=UnlabeledSet(train.images[unlabeled_rows], train.index[unlabeled_rows],
                               train.labels[unlabeled_rows]),
        info=info,
        _train_index=train.index[order].cpu(),
        _train_labels=train.labels[order].cpu(),
    )
