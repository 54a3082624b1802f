"""Provenance of a model: which rows of which store it learnt from, when, with which dgmm.

A fitted mixture may carry ``provenance_``, a record saved in the model file's
metadata (see :func:`dgmm.io.save_model`) and shown by ``dgmm info``::

    {"history": [entry, ...]}       # oldest first; `dgmm fit` writes the first,
                                    # every `dgmm update` appends one
    entry = {
        "action": "fit" | "update",
        "time": "2026-11-30T02:00:05+00:00",     # ISO 8601, UTC
        "dgmm_version": "0.1.0",
        "store": {"path": ..., "array": ... or None, "shape": [n_rows, n_features],
                  "dtype": ..., "head_rows": m, "head_sha256": ...},
        "rows": [start, stop],                   # the rows learnt, stop excluded
        ...                                      # the settings of that step
    }

A store is recognised by its first rows, not by its path (a store may move,
and a path may be reused for other data): ``head_sha256`` is the SHA-256 of
its dtype, its number of features and the bytes of its first ``head_rows``
rows (at most :data:`HEAD_ROWS`). Rows appended later leave that hash
unchanged, so the rows a model has seen of a growing store are known, and
``dgmm update`` learns only new ones.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

import numpy as np

from dgmm._version import __version__

# Rows whose bytes identify a store: enough to tell stores apart, one read.
HEAD_ROWS = 1000


def head_digest(X, rows: int) -> str:
    """SHA-256 of the dtype, the number of features and the first ``rows`` rows of ``X``."""
    digest = hashlib.sha256(f"{np.dtype(X.dtype).str}|{X.shape[1]}|".encode())
    digest.update(np.ascontiguousarray(X[:rows]).tobytes())
    return digest.hexdigest()


def describe_store(X, path: str, array: str | None) -> dict:
    """What identifies the store ``X`` was opened from (a ``zarr.Array`` or any 2-D array)."""
    head = int(min(HEAD_ROWS, X.shape[0]))
    return {
        "path": path if "://" in str(path) else os.path.realpath(path),
        "array": array,
        "shape": [int(s) for s in X.shape],
        "dtype": str(X.dtype),
        "head_rows": head,
        "head_sha256": head_digest(X, head),
    }


def now() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def entry(action: str, store: dict, rows: tuple[int, int], **details) -> dict:
    """One history entry: ``action`` learnt ``rows`` of ``store`` now, with ``details``."""
    return {"action": action, "time": now(), "dgmm_version": __version__, "store": store,
            "rows": [int(rows[0]), int(rows[1])], **details}


def appended(provenance: dict | None, new: dict) -> dict:
    """``provenance`` (None: none yet) with the entry ``new`` added last; the input is kept."""
    return {"history": [*history(provenance), new]}


def history(provenance: dict | None) -> list[dict]:
    """The entries of a provenance record, oldest first (none for None)."""
    return list((provenance or {}).get("history", []))


def same_store(store: dict, X) -> bool:
    """Whether ``X`` begins with the rows of ``store`` (an entry's description)."""
    if X.shape[1] != store["shape"][1] or np.dtype(X.dtype).str != np.dtype(store["dtype"]).str:
        return False
    head = int(store["head_rows"])
    return X.shape[0] >= head and head_digest(X, head) == store["head_sha256"]


def rows_seen(provenance: dict | None, X) -> list[tuple[int, int]]:
    """The row ranges of ``X`` the model has learnt from, merged and sorted (empty: none)."""
    ranges = sorted(tuple(e["rows"]) for e in history(provenance) if same_store(e["store"], X))
    merged: list[tuple[int, int]] = []
    for start, stop in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def parse_rows(text: str, n_rows: int) -> tuple[int, int]:
    """``'START:STOP'`` (either may be left out: ``'1000:'``, ``':500'``) as a non-empty range.

    Raises ``ValueError`` with a message for people.
    """
    try:
        start_text, stop_text = text.split(":")
        start = int(start_text) if start_text.strip() else 0
        stop = int(stop_text) if stop_text.strip() else n_rows
    except ValueError:
        raise ValueError(f"--rows takes START:STOP (e.g. 1000:2000 or 1000:); "
                         f"got {text!r}") from None
    if not 0 <= start < stop <= n_rows:
        raise ValueError(f"--rows {text} is not a non-empty range of the store's {n_rows} rows")
    return start, stop


def _format(ranges) -> str:
    return ", ".join(f"{a}:{b}" for a, b in ranges)


def new_rows(provenance: dict | None, X, rows: tuple[int, int] | None, where: str,
             model: str) -> tuple[int, int]:
    """The rows of ``X`` to learn next: ``rows``, or by default those after every row seen.

    Raises ``ValueError`` (a message for people naming ``where``, the store,
    and ``model``) when the default cannot be found (the model records no rows
    of this store, or there are no new rows), or when ``rows`` overlap rows
    the model has already learnt from.
    """
    seen = rows_seen(provenance, X)
    n = int(X.shape[0])
    if rows is None:
        if not seen:
            raise ValueError(f"{model} records no rows of {where} (it was fitted on another store "
                             "or has no provenance); pass --rows START:STOP")
        start = seen[-1][1]
        if start >= n:
            raise ValueError(f"no new rows: {model} has seen rows {_format(seen)} of {where}, "
                             f"which has {n} rows")
        return start, n
    start, stop = rows
    overlap = [(max(a, start), min(b, stop)) for a, b in seen if a < stop and start < b]
    if overlap:
        raise ValueError(f"rows {_format(overlap)} of {where} were already learnt by {model} "
                         f"(it has seen rows {_format(seen)}); update takes new rows only")
    return start, stop


def describe(provenance: dict | None) -> list[str]:
    """Lines for people: one per history entry."""
    lines = []
    for e in history(provenance):
        store = e["store"]
        where = store["path"] + (f"/{store['array']}" if store.get("array") else "")
        shape = " x ".join(map(str, store["shape"]))
        start, stop = e["rows"]
        lines.append(f"{e['time']}  {e['action']:<6} rows {start}:{stop} of {where} "
                     f"({shape} {store['dtype']}, head {store['head_sha256'][:12]})  "
                     f"dgmm {e['dgmm_version']}")
    return lines
