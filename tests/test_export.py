"""`mlds export` (mlds_jax/research/export.py): each format round-trips the selected rows with the
layout table and per-net metadata; bad selections fail with one line and write nothing."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import mlds_jax
from mlds_jax.cli import main
from tests.stores import build_store

SELECTION = "task=ParityMachine,EightBitMachine&status=finished"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "s.zarr"
    build_store(path, n_nets=20)
    return path


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output.strip().splitlines()


def check_metadata(meta, ds, ids):
    assert meta["format"] == "mlds-export" and meta["selection"] == SELECTION
    assert meta["layout"] == ds.layout and meta["network"] == ds.network
    assert meta["config"] == ds.config and meta["task_names"] == ds.task_names
    assert [r["net"] for r in meta["nets"]] == list(ids)
    df = ds.metadata()
    for rec in meta["nets"]:
        row = df.loc[rec["net"]]
        assert (rec["task_name"], rec["status_name"], rec["epochs"]) == (
            row["task_name"], row["status_name"], row["epochs"])
        acc = row["val_bit_accuracy"]
        assert rec["val_bit_accuracy"] == (None if np.isnan(acc) else pytest.approx(acc))


def test_npz(store_path, tmp_path):
    ds = mlds_jax.open_dataset(store_path)
    ids = ds.select(SELECTION)
    assert list(ids) == [2, 4, 7, 9, 12, 14]  # 7 is diverged (kept), 17 and 19 pending
    code, lines = cli("export", store_path, tmp_path / "x.npz", "--nets", SELECTION,
                      "--initial")
    assert code == 0 and lines == [f"wrote 6 nets to {tmp_path / 'x.npz'} (npz)"]
    with np.load(tmp_path / "x.npz") as f:  # no pickle needed
        np.testing.assert_array_equal(f["net"], ids)
        np.testing.assert_array_equal(f["weights"], ds.weights.oindex[ids])
        np.testing.assert_array_equal(f["initial_weights"], ds.initial_weights.oindex[ids])
        np.testing.assert_array_equal(f["loss_curve"], ds.loss_curve.oindex[ids])
        np.testing.assert_array_equal(f["status"], ds.status.oindex[ids])
        meta = json.loads(str(f["metadata"]))
    check_metadata(meta, ds, ids)
    assert meta["initial_weights"] is True
    assert not list(tmp_path.glob(".*partial"))


def test_safetensors(store_path, tmp_path):
    from safetensors.numpy import load_file
    from safetensors import safe_open

    ds = mlds_jax.open_dataset(store_path)
    ids = ds.select(SELECTION)
    out = tmp_path / "x.safetensors"
    assert cli("export", store_path, out, "--nets", SELECTION)[0] == 0
    tensors = load_file(out)
    for i, n in enumerate(ids):  # stacked state_dicts: t[i] is net i's tensor
        want = ds.state_dict(int(n))
        got = {k: tensors[k][i] for k in want}
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    np.testing.assert_array_equal(tensors["net"], ids)
    assert not any(k.startswith("initial.") for k in tensors)
    with safe_open(out, "np") as f:
        header = f.metadata()
    assert header["format"] == "mlds-export"
    check_metadata(json.loads(header["metadata"]), ds, ids)


def test_torch(store_path, tmp_path):
    torch = pytest.importorskip("torch")
    from mlds_jax.research.torch_export import load_nets

    ds = mlds_jax.open_dataset(store_path)
    out = tmp_path / "x.pt"
    assert cli("export", store_path, out, "--nets", "1,5,9", "--format", "torch")[0] == 0
    blob = torch.load(out, weights_only=True)
    assert blob["metadata"]["layout"] == ds.layout
    nets = load_nets(out)
    assert [info["net"] for _, info in nets] == [1, 5, 9]
    xs = torch.from_numpy(np.random.default_rng(0).random((2, 12, 9), np.float32))
    for module, info in nets:
        assert info["task_name"] == ds.task_names[info["net"] % 5]
        with torch.no_grad():
            np.testing.assert_array_equal(module(xs).numpy(),
                                          ds.to_torch(info["net"])(xs).numpy())


@pytest.mark.parametrize("args, needle", [
    (["--nets", "0:25"], "net 24 in '0:25' does not exist"),
    (["--nets", "task=Bogus"], "unknown task 'Bogus'"),
    (["--nets", "status=pending&task=0"], "matches no nets"),
    (["--nets", "size=3"], "unknown selection key 'size'"),
    (["--nets", "1;2"], "cannot read '1;2'"),
])
def test_bad_selection_one_line(store_path, tmp_path, args, needle):
    code, lines = cli("export", store_path, tmp_path / "x.npz", *args)
    assert code == 1 and len(lines) == 1 and needle in lines[0], lines
    assert not list(tmp_path.iterdir())


def test_format_and_existing_file(store_path, tmp_path):
    code, lines = cli("export", store_path, tmp_path / "x.bin", "--nets", "0")
    assert code == 1 and len(lines) == 1 and "--format" in lines[0]
    out = tmp_path / "x.npz"
    out.write_text("mine")
    code, lines = cli("export", store_path, out, "--nets", "0")
    assert code == 1 and "--overwrite" in lines[0] and out.read_text() == "mine"
    assert cli("export", store_path, out, "--nets", "0", "--overwrite")[0] == 0
    code, lines = cli("export", store_path.parent / "absent.zarr", out)
    assert code == 1 and len(lines) == 1 and "absent.zarr" in lines[0]
