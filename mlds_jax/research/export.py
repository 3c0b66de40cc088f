"""Export selected nets of a store to one file: npz, safetensors or a PyTorch ``.pt``.

Every format carries the parameter layout table and each net's metadata, so the file is
usable without the store:

- ``npz``: arrays ``net`` (R,), ``task``, ``seed``, ``status``, ``epochs``, ``weights``
  (R, P), ``val_accuracy`` (R, A), ``loss_curve`` (R, E), optionally ``initial_weights``,
  and ``metadata``: a 0-d string array holding the JSON below
  (``json.loads(str(np.load(f)["metadata"]))``; no pickle needed).
- ``safetensors``: one tensor per ``state_dict`` key, stacked along a leading net axis
  ((R, *shape): ``{k: t[i] for k in layout keys}`` is net i's state_dict), ``initial.<key>``
  likewise with ``--initial``, the per-net arrays as in npz; the header's metadata is
  ``{"format": "mlds-export", "metadata": <the JSON below>}``.
- ``torch``: ``torch.save`` of ``{"format", "metadata", "nets": [{"net", "task", ...,
  "state_dict"}]}``, loadable with ``torch.load(path, weights_only=True)``;
  ``mlds_jax.torch_export.load_nets(path)`` gives ready modules. Meant for up to a few
  thousand nets (one pickled entry per net); prefer npz or safetensors for more.

The JSON: format, format_version, dataset, source store, selection, config, network,
task_names, status_names, accuracy_names, layout, n_params, package versions and ``nets``:
one record per exported net (net, task, task_name, seed, status, status_name, epochs,
accuracies; NaN written as null).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import numpy as np

from mlds_jax.research.reader import Dataset
from mlds_jax.store.schema import STATUS_NAMES, StoreError

FORMATS = {"npz": ".npz", "safetensors": ".safetensors", "torch": ".pt"}
EXPORT_FORMAT_VERSION = 1


def format_for(out: str | Path) -> str:
    """The format a file name's suffix implies (.npz, .safetensors, .pt/.pth)."""
    suffix = Path(out).suffix.lower()
    for fmt, ext in FORMATS.items():
        if suffix == ext or (fmt == "torch" and suffix == ".pth"):
            return fmt
    raise ValueError(f"cannot tell the format from {str(out)!r}; give --format "
                     f"({', '.join(FORMATS)})")


def export(ds: Dataset, ids, fmt: str, out: str | Path, *, initial: bool = False,
           selection: str | None = None) -> Path:
    """Write nets ``ids`` (R,) of ``ds`` to ``out`` in ``fmt`` (npz, safetensors, torch);
    ``initial`` adds their initial weights. Written to a temporary name and renamed, so a
    failed export leaves nothing behind. Returns the path written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    ids = np.asarray(ids, np.int64)
    if not ids.size:
        raise ValueError("no nets to export")
    out = Path(out)
    rows = _rows(ds, ids, initial)
    meta = export_metadata(ds, ids, rows, selection)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        {"npz": _npz, "safetensors": _safetensors, "torch": _torch}[fmt](ds, rows, meta, tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise StoreError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _rows(ds: Dataset, ids: np.ndarray, initial: bool) -> dict[str, np.ndarray]:
    rows = dict(
        net=ids,
        task=ds.tasks()[ids].astype(np.int32),
        seed=np.asarray(ds.seed.oindex[ids]),
        status=np.asarray(ds.status.oindex[ids]),
        epochs=np.asarray(ds.epochs.oindex[ids]),
        val_accuracy=np.asarray(ds.val_accuracy.oindex[ids]),
        loss_curve=np.asarray(ds.loss_curve.oindex[ids]),
        weights=ds.load_weights(ids),
    )
    if initial:
        rows["initial_weights"] = ds.load_weights(ids, initial=True)
    return rows


def _finite_or_none(x: float):
    return None if not math.isfinite(x) else x


def export_metadata(ds: Dataset, ids: np.ndarray, rows: dict, selection: str | None) -> dict:
    """The JSON-able description every format carries (see the module docstring)."""
    from mlds_jax._version import __version__

    names = ds.task_names
    nets = []
    for i, n in enumerate(ids):
        task = int(rows["task"][i])
        rec = dict(net=int(n), task=task, task_name=names[task] if task < len(names) else str(task),
                   seed=int(rows["seed"][i]), status=int(rows["status"][i]),
                   status_name=STATUS_NAMES.get(int(rows["status"][i]), "unknown"),
                   epochs=int(rows["epochs"][i]))
        for j, acc in enumerate(ds.accuracy_names):
            rec[acc] = _finite_or_none(float(rows["val_accuracy"][i, j]))
        nets.append(rec)
    return dict(
        format="mlds-export", format_version=EXPORT_FORMAT_VERSION,
        dataset=ds.attrs["dataset"], source=str(ds.path), selection=selection,
        config=ds.config, network=ds.network, task_names=names,
        status_names={str(k): v for k, v in STATUS_NAMES.items()},
        accuracy_names=ds.accuracy_names, layout=ds.layout, n_params=ds.n_params,
        initial_weights="initial_weights" in rows,
        store_package_version=ds.attrs.get("package_version"), package_version=__version__,
        nets=nets,
    )


def _dumps(meta: dict) -> str:
    return json.dumps(meta, allow_nan=False, separators=(",", ":"))


def _npz(ds, rows, meta, tmp: Path) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        np.savez(f, metadata=np.array(_dumps(meta)), **rows)


def _stacked(layout, flat: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """{prefix + torch_key: (R, *shape)} from flat (R, P) rows."""
    return {
        prefix + s["torch_key"]: np.ascontiguousarray(
            flat[:, s["offset"] : s["offset"] + math.prod(s["shape"])].reshape(
                (flat.shape[0], *s["shape"])))
        for s in layout
    }


def _safetensors(ds, rows, meta, tmp: Path) -> None:
    from safetensors.numpy import save_file

    tensors = _stacked(ds.layout, rows["weights"])
    if "initial_weights" in rows:
        tensors |= _stacked(ds.layout, rows["initial_weights"], "initial.")
    for k in ("net", "task", "seed", "status", "epochs", "val_accuracy", "loss_curve"):
        tensors[k] = np.ascontiguousarray(rows[k])
    save_file(tensors, str(tmp), metadata={"format": "mlds-export", "metadata": _dumps(meta)})


def _torch(ds, rows, meta, tmp: Path) -> None:
    import torch

    weights = torch.from_numpy(rows["weights"])
    initial = torch.from_numpy(rows["initial_weights"]) if "initial_weights" in rows else None

    def state(flat_rows: torch.Tensor, i: int) -> dict:
        # views into one storage per array: the file holds each float once
        return {s["torch_key"]: flat_rows[i, s["offset"] : s["offset"] + math.prod(s["shape"])]
                .view(*s["shape"]) for s in ds.layout}

    nets = []
    for i, rec in enumerate(meta["nets"]):
        entry = dict(rec, loss_curve=torch.from_numpy(rows["loss_curve"][i].copy()),
                     state_dict=state(weights, i))
        if initial is not None:
            entry["initial_state_dict"] = state(initial, i)
        nets.append(entry)
    header = {k: v for k, v in meta.items() if k != "nets"}
    torch.save({"format": "mlds-export", "metadata": header, "nets": nets}, tmp)
