"""`mlds card` (mlds_jax/research/card.py): README.md with the tables a reader needs, three PNG
figures, a PCA that separates what differs, and a carded store that stays a store."""

import re

import numpy as np
import pytest
from click.testing import CliRunner

import mlds_jax
from mlds_jax import generate as gen
from mlds_jax.cli import main
from mlds_jax.research.figures import pca_2d
from tests.stores import build_store, smoke_config

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    path = tmp_path_factory.mktemp("card") / "s.zarr"
    build_store(path, n_nets=60)  # 57 finished, 3 pending
    result = CliRunner().invoke(main, ["card", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_readme_sections_and_tables(carded):
    ds = mlds_jax.open_dataset(carded)
    text = (carded / "README.md").read_text()
    for heading in ("## Tasks", "## Counts per task and status", "## Learnability",
                    "## How it was trained", "## Files", "## Loading", "## Parameter layout",
                    "## Integrity", "## Licence", "## How to cite"):
        assert f"\n{heading}\n" in text, heading
    assert text.startswith("# ds1-smoke: 60 trained GRU networks on 5 tasks")
    assert "CC BY-SA 4.0" in text and "creativecommons.org/licenses/by-sa/4.0" in text
    assert "arXiv:2104.10555" in text and "@misc{ds1smoke" in text
    assert "4,364 parameters" in text
    # counts per task and status: one row per task plus the total
    status, task = np.asarray(ds.status[:]), ds.tasks()
    for t, name in enumerate(ds.task_names):
        mine = task == t
        row = f"| {name} | " + " | ".join(str(int((mine & (status == c)).sum()))
                                          for c in range(4)) + f" | {int(mine.sum())} |"
        assert row in text, row
    assert "| **all** | 3 |" in text
    # learnability, the resolved config, every tensor of the layout
    s = ds.summary()[0]
    assert f"| {s.task} | {s.finished}/{s.total} | {s.converged} (" in text
    assert '"max_epochs": 40' in text and "| `learning_rate` | `0.02` |" in text
    layout_rows = re.findall(r"^\| `(rnn|head)\.[^`]+` \| [0-9x]+ \| \d+ \| \d+ \|$", text,
                             flags=re.M)
    assert len(layout_rows) == len(ds.layout) == 24
    assert "| `head.6.bias` | 8 | 4356 | 8 |" in text


def test_figures_are_pngs_the_readme_shows(carded):
    text = (carded / "README.md").read_text()
    shown = re.findall(r"!\[[^]]*\]\((figures/[^)]+\.png)\)", text)
    assert sorted(shown) == ["figures/epochs_to_converge.png", "figures/loss_curves.png",
                             "figures/weights_pca.png"]
    for rel in shown:
        data = (carded / rel).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, rel
    assert not [p for p in (carded / "figures").iterdir() if "partial" in p.name]


def test_carded_store_is_still_a_store(carded, tmp_path):
    ds = mlds_jax.open_dataset(carded)
    assert len(ds) == 60
    # --overwrite still recognises (and may delete) a store holding a card
    import shutil
    copy = tmp_path / "copy.zarr"
    shutil.copytree(carded, copy)
    store = gen.open_store(smoke_config(), copy, n_nets=5, overwrite=True)
    assert store.n_nets == 5 and not (copy / "README.md").exists()


def test_pca_separates_clusters():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 30))
    b = rng.standard_normal((40, 30)) + 8.0 * np.eye(30)[3]  # shifted along one axis
    proj, share = pca_2d(np.concatenate([a, b]))
    assert proj.shape == (80, 2) and 0 < share[1] <= share[0] < 1
    pc1 = proj[:, 0]
    assert min(pc1[:40].max(), pc1[40:].max()) < max(pc1[:40].min(), pc1[40:].min())


def test_card_of_a_store_with_nothing_finished(tmp_path):
    path = tmp_path / "empty.zarr"
    build_store(path, n_nets=10, written=[])
    result = CliRunner().invoke(main, ["card", str(path), "--out", str(tmp_path / "card")])
    assert result.exit_code == 0, result.output
    assert "0 finished" in (tmp_path / "card" / "README.md").read_text()
    assert len(list((tmp_path / "card" / "figures").glob("*.png"))) == 3
