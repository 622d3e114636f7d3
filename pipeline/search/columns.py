"""An index directory's metadata columns as ``where`` sees them: kinds to check against, values to filter.

The kinds come from index.json's ``metadata`` (pipeline.index.metadata), or from items.arrow's schema
for indexes written before it. Values are items.arrow's columns, memory-mapped (only the columns a
predicate names are paged in), and the ``metadata.<field>`` columns parsed from the JSON sidecars on
first use. The masks of the last few predicates are kept, so repeated filters cost one lookup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from pipeline.index.metadata import SIDECAR_COLUMN, SIDECAR_PREFIX, kind_of, read_items, sidecar_fields
from pipeline.index.store.directory import IndexDirectory
from pipeline.index.store.format import ITEMS_FILE
from pipeline.search.filter import FilterError
from pipeline.search.where import Where, compile_where

MASKS_KEPT = 8  # masks of recent predicates (1 byte per row each)


class ItemColumns:
    """The filterable columns of one opened index directory. Thread-safe."""

    def __init__(self, directory: IndexDirectory) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._table: pa.Table | None = None
        self._sidecar: pa.Table | None = None
        self._masks: OrderedDict[str, tuple[Where, np.ndarray]] = OrderedDict()
        described = directory.info.metadata
        if described is not None:
            kinds = {name: column["kind"] for name, column in described.get("columns", {}).items()}
            kinds.update({name: field["kind"] for name, field in (described.get("sidecar") or {}).items()})
            self._sidecar_known = "sidecar" in described
        else:  # an index written before index.json recorded its metadata
            kinds = {field.name: kind_of(field.type) for field in directory.item_schema}
            self._sidecar_known = False
        self.kinds = kinds

    def table(self) -> pa.Table:
        if self._table is None:
            self._table = read_items(self.directory.path / ITEMS_FILE)
        return self._table

    def _sidecar_table(self) -> pa.Table | None:
        if self._sidecar is None and SIDECAR_COLUMN in self.table().column_names:
            self._sidecar = sidecar_fields(self.table().column(SIDECAR_COLUMN))
        return self._sidecar

    def column(self, name: str) -> pa.ChunkedArray:
        if name in self.table().column_names:
            return self.table().column(name)
        sidecar = self._sidecar_table() if name.startswith(SIDECAR_PREFIX) else None
        if sidecar is None or name not in sidecar.column_names:
            raise FilterError(f"where: unknown column {name!r}")
        return sidecar.column(name)

    def compile(self, text: str) -> Where:
        """``text`` checked against the columns (FilterError, a LatentError, when it does not fit)."""
        kinds = self.kinds
        if not self._sidecar_known and SIDECAR_COLUMN in kinds:  # older index: learn the sidecar fields now
            with self._lock:
                sidecar = self._sidecar_table()
            if sidecar is not None:
                kinds = {**{f.name: kind_of(f.type) for f in sidecar.schema}, **kinds}
        return compile_where(text, kinds)

    def mask(self, text: str) -> tuple[Where, np.ndarray]:
        """The checked predicate and its boolean row mask (label order)."""
        with self._lock:
            if text in self._masks:
                self._masks.move_to_end(text)
                return self._masks[text]
        where = self.compile(text)
        with self._lock:
            mask = where.evaluate(self.column, self.directory.info.ntotal)
            self._masks[text] = (where, mask)
            while len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)
        return where, mask
