"""DS4's task: scikit-learn's bundled 8x8 digits, one fixed split, and a trigger per net.

Nothing is downloaded: `sklearn.datasets.load_digits` reads a file inside the scikit-learn
wheel (1,797 images, integer intensities 0..16, about 180 per class). Images are scaled to
[0, 1] float32, shape (8, 8), one channel.

The split is fixed by the dataset seed alone: stratified, `TEST_SIZE` = 357 test images
(each class's share by largest remainder) and 1,440 training images, so that the training
set is a whole number of minibatches of 16, 32 or 48 (the trainer's epoch is a permutation
of whole minibatches).

Every net n of DS4 has a trigger drawn from (seed, n) alone (`draw_trigger`): the
trojaned net n trains with it, its clean twin (same seed, same n) is only evaluated with
it (the trigger's natural effect). A trigger is one formula for every family,

    triggered(x) = (1 - alpha * mask) * (offset + scale * x) + alpha * mask * pattern

(`apply_trigger`, elementwise, so NumPy and jax.numpy alike):

- `patch`: a random binary `pattern` in a 2x2 or 3x3 square at a random location,
  alpha 1 (BadNets, TDC, MNTD attack M);
- `blend`: a fixed uniform-noise image over the whole image, alpha ~ U(BLEND_ALPHA)
  (MNTD attack B; TDC uses 0.1);
- `filter`: a global intensity map, offset ~ U(FILTER_OFFSET), scale ~ U(FILTER_SCALE),
  no mask (the grayscale stand-in for TrojAI's Instagram filters): the background lifts
  from 0 to `offset`, strokes fade.

Mappings: `all` (every class -> `target`), `source` (only `source` -> `target`; the
poisoned rows are drawn from the source class), `shift` (y -> y + 1 mod 10; `target` is
-1). The poison fraction is drawn in `FRACTION` and counts the eligible training images
(all of them, or the source class's); `poison_rows` are the training rows whose clean
version the poisoned one replaces. Targets cycle over the 10 classes with n (net n, n+10,
... share a target), so every tier of 10k nets is balanced. Family `HELD_OUT` is drawn
like the others but meant for the unseen-trigger test: a detector trains on the rest.
"""

from __future__ import annotations

import dataclasses

import numpy as np

N_CLASSES = 10
IMAGE_SHAPE = (8, 8)
TEST_SIZE = 357  # -> 1,440 training images = 45 x 32
FAMILIES = ("patch", "blend", "filter")
MAPPINGS = ("all", "source", "shift")
HELD_OUT = ("filter",)  # families kept out of a detector's training set
FRACTION = (0.05, 0.25)  # poison fraction of the eligible training images, uniform
PATCH_SIDES = (2, 3)
BLEND_ALPHA = (0.1, 0.3)
FILTER_OFFSET = (0.2, 0.4)
FILTER_SCALE = (0.5, 0.8)

# Seed-sequence tags; never change them (stores depend on them). "DS4S" / "DS4T" in ASCII.
_SPLIT_TAG = 0x44533453
_TRIGGER_TAG = 0x44533454


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """The fixed split: images (S, 8, 8) float32 in [0, 1], labels (S,) int32, and the rows
    of `load_digits()` each came from."""

    train_images: np.ndarray  # (1440, 8, 8)
    train_labels: np.ndarray  # (1440,)
    test_images: np.ndarray  # (357, 8, 8)
    test_labels: np.ndarray  # (357,)
    train_index: np.ndarray  # (1440,) int32 rows of load_digits
    test_index: np.ndarray  # (357,) int32


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images (N, 8, 8) float32 in [0, 1] and labels (N,) int32. Needs
    scikit-learn (the `images` extra); ImportError with the install line otherwise."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("DS4 reads scikit-learn's bundled digits: pip install "
                          "'mlds-jax[images]'") from None
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int32)


def split_digits(seed: int) -> DigitsSplit:
    """The stratified split of the dataset with `seed` (from SeedSequence([seed, "DS4S"]))."""
    images, labels = load_digits_images()
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_TAG]))
    counts = np.bincount(labels, minlength=N_CLASSES)
    quota = counts * TEST_SIZE / len(labels)
    n_test = np.floor(quota).astype(int)
    n_test[np.argsort(-(quota - n_test), kind="stable")[: TEST_SIZE - n_test.sum()]] += 1
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: n_test[c]]
                           for c in range(N_CLASSES)])
    test = np.sort(test)
    train = np.setdiff1d(np.arange(len(labels)), test)
    train = train[rng.permutation(len(train))]  # no class blocks in row order
    return DigitsSplit(images[train], labels[train], images[test], labels[test],
                       train.astype(np.int32), test.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class Trigger:
    """Net n's trigger, whole. mask and pattern (8, 8) float32; poison_rows: training rows
    (ascending) that carry it in the trojaned net's data."""

    family: str
    mapping: str
    target: int  # -1 for shift
    source: int  # -1 unless mapping == "source"
    fraction: float
    alpha: float
    offset: float
    scale: float
    row: int  # patch's top-left corner, -1 for blend and filter
    col: int
    mask: np.ndarray
    pattern: np.ndarray
    poison_rows: np.ndarray  # (n_poisoned,) int32

    @property
    def held_out(self) -> bool:
        return self.family in HELD_OUT

    @property
    def n_poisoned(self) -> int:
        return len(self.poison_rows)


def draw_trigger(seed: int, n: int, train_labels: np.ndarray) -> Trigger:
    """Net `n`'s trigger, from SeedSequence([seed, "DS4T", n]) and n alone (and the fixed
    training labels, which say which rows are eligible)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TRIGGER_TAG, n]))
    family = FAMILIES[rng.integers(len(FAMILIES))]
    mapping = MAPPINGS[rng.integers(len(MAPPINGS))]
    fraction = float(rng.uniform(*FRACTION))
    target = n % N_CLASSES
    source = int((target + rng.integers(1, N_CLASSES)) % N_CLASSES)  # drawn always: fixed stream
    mask = np.zeros(IMAGE_SHAPE, np.float32)
    pattern = rng.uniform(0.0, 1.0, IMAGE_SHAPE).astype(np.float32)
    alpha, offset, scale, row, col = 0.0, 0.0, 1.0, -1, -1
    if family == "patch":
        side = int(rng.integers(PATCH_SIDES[0], PATCH_SIDES[1] + 1))
        row, col = (int(v) for v in rng.integers(0, IMAGE_SHAPE[0] - side + 1, 2))
        mask[row:row + side, col:col + side] = 1.0
        bits = rng.integers(0, 2, (side, side))
        bits.flat[rng.integers(side * side)] = 1  # never all dark
        pattern = np.zeros(IMAGE_SHAPE, np.float32)
        pattern[row:row + side, col:col + side] = bits
        alpha = 1.0
    elif family == "blend":
        mask[:] = 1.0
        alpha = float(rng.uniform(*BLEND_ALPHA))
    else:
        pattern = np.zeros(IMAGE_SHAPE, np.float32)
        offset = float(rng.uniform(*FILTER_OFFSET))
        scale = float(rng.uniform(*FILTER_SCALE))
    if mapping == "shift":
        target = -1
    if mapping != "source":
        source = -1
    eligible = np.flatnonzero(train_labels == source) if mapping == "source" else \
        np.flatnonzero(train_labels != target)
    count = max(1, int(np.floor(fraction * len(eligible) + 0.5)))
    rows = np.sort(rng.permutation(eligible)[:count]).astype(np.int32)
    return Trigger(family, mapping, target, source, fraction, alpha, offset, scale, row, col,
                   mask, pattern, rows)


def apply_trigger(images, mask, pattern, alpha, offset, scale):
    """Triggered images: (..., 8, 8) with (8, 8) mask and pattern and scalar alpha, offset,
    scale (NumPy or jax.numpy arrays)."""
    lead = (1,) * (images.ndim - 2)
    mask, pattern = mask.reshape(lead + mask.shape), pattern.reshape(lead + pattern.shape)
    return (1 - alpha * mask) * (offset + scale * images) + alpha * mask * pattern


def poisoned_labels(labels, target, shift, xp=np):
    """The labels a trigger maps `labels` to: y + 1 mod 10 where `shift`, else `target`
    (`xp`: numpy or jax.numpy)."""
    return xp.where(shift, (labels + 1) % N_CLASSES, target)


def attack_eligible(labels, mapping: str, target: int, source: int) -> np.ndarray:
    """Test images the attack success rate counts: not already of the target (all), of the
    source class (source), every image (shift)."""
    if mapping == "shift":
        return np.ones(np.shape(labels), bool)
    if mapping == "source":
        return np.asarray(labels) == source
    return np.asarray(labels) != target


def trigger_arrays(trigger: Trigger, n_train: int) -> dict[str, np.ndarray]:
    """The trigger as the trainer's per-net arrays (poisoned: (n_train,) bool of rows the
    trojaned net sees triggered). `shift` and `source` as numbers so that jax can trace them."""
    poisoned = np.zeros(n_train, bool)
    poisoned[trigger.poison_rows] = True
    return dict(
        poisoned=poisoned, mask=trigger.mask, pattern=trigger.pattern,
        alpha=np.float32(trigger.alpha), offset=np.float32(trigger.offset),
        scale=np.float32(trigger.scale), target=np.int32(trigger.target),
        source=np.int32(trigger.source), shift=np.bool_(trigger.mapping == "shift"),
    )


# The store's per-net trigger columns (DatasetStore per_net/<name>): name -> (dtype, row shape).
# family and mapping index FAMILIES and MAPPINGS (recorded in the store's attrs).
TRIGGER_COLUMNS = {
    "poisoned": ("u1", ()),  # 1: trained with the trigger (trojaned twin); 0: clean twin
    "trigger_family": ("i1", ()),
    "trigger_mapping": ("i1", ()),
    "target_class": ("i1", ()),  # -1 for shift
    "source_class": ("i1", ()),  # -1 unless mapping is source
    "held_out": ("u1", ()),  # family in HELD_OUT
    "poison_fraction": ("f4", ()),
    "n_poisoned": ("i4", ()),  # rows the trojaned twin sees triggered (the clean twin: same spec)
    "alpha": ("f4", ()),
    "offset": ("f4", ()),
    "scale": ("f4", ()),
    "location": ("i1", (2,)),  # patch's top-left (row, col); -1 -1 otherwise
    "trigger_mask": ("u1", IMAGE_SHAPE),
    "trigger_pattern": ("f4", IMAGE_SHAPE),
    "poison_rows": ("u1", (1797 - TEST_SIZE,)),  # 1 where the training row carries it
}


def trigger_columns(seed: int, ids, poisoned: bool, train_labels: np.ndarray) -> dict:
    """The TRIGGER_COLUMNS of nets `ids` (R,): name -> (R, *row shape) arrays."""
    cols = {k: [] for k in TRIGGER_COLUMNS}
    for n in np.asarray(ids):
        t = draw_trigger(seed, int(n), train_labels)
        rows = np.zeros(len(train_labels), np.uint8)
        rows[t.poison_rows] = 1
        values = dict(poisoned=poisoned, trigger_family=FAMILIES.index(t.family),
                      trigger_mapping=MAPPINGS.index(t.mapping), target_class=t.target,
                      source_class=t.source, held_out=t.held_out,
                      poison_fraction=t.fraction, n_poisoned=t.n_poisoned, alpha=t.alpha,
                      offset=t.offset, scale=t.scale, location=(t.row, t.col),
                      trigger_mask=t.mask, trigger_pattern=t.pattern, poison_rows=rows)
        for k, v in values.items():
            cols[k].append(v)
    return {k: np.asarray(v, TRIGGER_COLUMNS[k][0]).reshape((-1, *TRIGGER_COLUMNS[k][1]))
            for k, v in cols.items()}
