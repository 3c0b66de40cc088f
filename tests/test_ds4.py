"""DS4 end to end, as a user runs it: `mlds generate ds4` and `ds4-trojan` (a tiny tier,
10 epochs) from the repo root, then the stores checked against an independent reference:
plain torch.nn.Conv2d / Linear on the stored weights and the stored trigger spec give the
stored clean accuracies and attack success rates; twins share their initial weights; a
planted trigger works on the trojaned net and not on its clean twin."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlds_jax.store.dataset_store import DatasetStore
from mlds_jax.tasks import digits

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parent.parent
NETS = 8
SETTINGS = ["--set", "recipe.max_epochs=10", "--set", "recipe.check_every=10",
            "--set", "run.chunk_rows=4", "--set", "run.checkpoint_minutes=0"]


def _generate(config: str, out: Path) -> str:
    cmd = [sys.executable, "-m", "mlds_jax.cli", "generate", config, "--out",
           str(out), "--per-task", str(NETS), *SETTINGS]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("ds4")
    out = {c: base / f"{c}.zarr" for c in ("ds4", "ds4-trojan")}
    for config, path in out.items():
        _generate(config, path)
    return {c: DatasetStore.open(p) for c, p in out.items()}


def _torch_logits(store: DatasetStore, n: int, images: np.ndarray) -> np.ndarray:
    """Net n of the store as plain torch modules built here, loaded by state_dict key."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, 1, 1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU())
    head = torch.nn.Linear(16, 10)
    flat = store.read_rows([n])["weights"][0]
    sd = {s["torch_key"]: torch.from_numpy(
        flat[s["offset"]:s["offset"] + int(np.prod(s["shape"]))].reshape(s["shape"]).copy())
        for s in store.attrs["layout"]}
    conv.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("conv.")}, strict=True)
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")}, strict=True)
    with torch.no_grad():
        return head(conv(torch.from_numpy(images)[:, None]).mean(dim=(2, 3))).numpy()


def test_torch_on_stored_weights_gives_stored_metrics(stores):
    images, labels = digits.load_digits_images()
    for store in stores.values():
        test = store.tables()["digits_test_index"]
        x, y = images[test], labels[test]
        acc = store.read_array("val_accuracy")
        names = store.attrs["accuracy_names"]
        spec = {k: store.read_per_net(k) for k in store.per_net_names()}
        assert (store.read_array("status") > 0).all() and store.n_nets == NETS
        for n in range(NETS):
            right = _torch_logits(store, n, x).argmax(1) == y
            assert abs(right.mean() - acc[n, names.index("clean_accuracy")]) <= 1 / len(y)
            for c in range(10):
                stored = acc[n, names.index(f"class_{c}_accuracy")]
                assert abs(right[y == c].mean() - stored) <= 1 / (y == c).sum()
            # The attack success rate from the stored spec alone, through torch.
            mapping = digits.MAPPINGS[spec["trigger_mapping"][n]]
            target, source = int(spec["target_class"][n]), int(spec["source_class"][n])
            xt = digits.apply_trigger(x, spec["trigger_mask"][n].astype(np.float32),
                                      spec["trigger_pattern"][n], spec["alpha"][n],
                                      spec["offset"][n], spec["scale"][n])
            wanted = digits.poisoned_labels(y, target, mapping == "shift")
            eligible = digits.attack_eligible(y, mapping, target, source)
            asr = (_torch_logits(store, n, xt).argmax(1) == wanted)[eligible].mean()
            assert abs(asr - acc[n, names.index("attack_success_rate")]) <= 1 / eligible.sum()


def test_twins_share_init_and_trigger_and_differ_in_poison(stores):
    clean, trojan = stores["ds4"], stores["ds4-trojan"]
    ids = list(range(NETS))
    a, b = clean.read_rows(ids), trojan.read_rows(ids)
    np.testing.assert_array_equal(a["initial_weights"], b["initial_weights"])
    assert not np.array_equal(a["weights"], b["weights"])
    for name in clean.per_net_names():
        if name != "poisoned":
            np.testing.assert_array_equal(a[f"per_net/{name}"], b[f"per_net/{name}"])
    assert (a["per_net/poisoned"] == 0).all() and (b["per_net/poisoned"] == 1).all()
    # The stored spec is net n's draw from (seed, n).
    split = digits.split_digits(0)
    for n in ids:
        t = digits.draw_trigger(0, n, split.train_labels)
        np.testing.assert_array_equal(np.flatnonzero(b["per_net/poison_rows"][n]), t.poison_rows)
        assert digits.FAMILIES[b["per_net/trigger_family"][n]] == t.family
    np.testing.assert_array_equal(clean.tables()["digits_train_index"], split.train_index)


def test_planted_trigger_works_on_the_trojaned_net_not_its_twin(stores):
    col = stores["ds4"].attrs["accuracy_names"].index("attack_success_rate")
    clean_asr = stores["ds4"].read_array("val_accuracy")[:, col]
    trojan_asr = stores["ds4-trojan"].read_array("val_accuracy")[:, col]
    fraction = stores["ds4"].read_per_net("poison_fraction")
    mapping = stores["ds4"].read_per_net("trigger_mapping")
    strong = (fraction >= 0.2) & (mapping != digits.MAPPINGS.index("shift"))
    assert strong.sum() >= 2  # seed 0: nets 0 (filter, source) and 7 (patch, all)
    assert (trojan_asr[strong] >= 0.9).all() and (clean_asr[strong] <= 0.1).all()
    assert trojan_asr.mean() > clean_asr.mean() + 0.3


def test_rerun_resumes_with_nothing_left(stores):
    path = stores["ds4"].path
    before = stores["ds4"].read_rows(list(range(NETS)))["weights"]
    text = _generate("ds4", path)
    assert "0 trained now" in text or "nothing to do" in text.lower(), text[-500:]
    np.testing.assert_array_equal(DatasetStore.open(path).read_rows(list(range(NETS)))["weights"],
                                  before)


def test_info_works_and_analyze_without_the_twin_says_so_in_one_line(stores):
    path = str(stores["ds4-trojan"].path)
    for args, ok in ((["info", path], True), (["analyze", path], False)):
        done = subprocess.run([sys.executable, "-m", "mlds_jax.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert (done.returncode == 0) == ok, done.stderr[-1000:]
        assert "Traceback" not in done.stderr
    assert "needs the twin store" in done.stderr


def test_a_checkpointed_population_resumes_to_the_same_weights():
    """The trigger arrays in NetState.task_params travel through export/import_state."""
    from mlds_jax.config.load import load_config
    from mlds_jax.train import vision
    from mlds_jax.train.population import Population

    cfg = load_config("ds4-trojan", ["recipe.max_epochs=4", "recipe.check_every=2"])
    split = vision.split_of(cfg.seed)
    pop = Population(cfg, split, slots=2)
    saved = []

    def on_state(state, slot_net):
        if not saved and (slot_net >= 0).any():  # after the first step: epoch 2 of 4
            saved.append((pop.export_state(state), slot_net.copy()))

    full = {int(n): w for d in pop.run(range(2), on_state=on_state)
            for n, w in zip(d.net_id, d.weights)}
    again = Population(cfg, split, slots=2)
    leaves, slot_net = saved[0]
    resumed = {int(n): w for d in again.run([], resume=(again.import_state(leaves), slot_net))
               for n, w in zip(d.net_id, d.weights)}
    assert sorted(resumed) == [0, 1]
    for n in resumed:
        np.testing.assert_array_equal(resumed[n], full[n])


def test_a_released_tier_carries_the_trigger_specs_and_its_card(stores, tmp_path):
    """`mlds card` then `mlds release` on the trojaned store: the archive holds the first 4
    nets' per_net/ trigger arrays equal to the store's (read with plain zarr from the zip),
    and its card shows DS4's tables: the family rows counted here from the stored codes."""
    import zarr

    src = stores["ds4-trojan"]
    for args in (["card", str(src.path)], ["release", str(src.path), "--tiers", "4",
                                             "--out", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-m", "mlds_jax.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=200)
        assert done.returncode == 0, done.stderr[-2000:]
    archive = tmp_path / "ds4-trojan-4.zarr.zip"
    group = zarr.open_group(zarr.storage.ZipStore(archive, mode="r"), mode="r")
    for name in src.per_net_names():
        np.testing.assert_array_equal(group[f"per_net/{name}"][:], src.read_per_net(name)[:4])
    import zipfile

    card = zipfile.ZipFile(archive).read("README.md").decode()
    family = src.read_per_net("trigger_family")[:4]
    for k, name in enumerate(digits.FAMILIES):
        label = name + (" (held out)" if name in digits.HELD_OUT else "")
        assert f"| {label} | {int((family == k).sum())} |" in card
    assert "## Targets" in card and "attack success rate, patch family" in card
