"""GeoParquetWriter: per-tile embeddings streamed into a GeoParquet 1.1.0 file.

The `geo` metadata must hold the bounding box of all rows, known only at the end, while pyarrow fixes the schema
(and its metadata) when the writer opens. The footer is written at close, so the file-level key/value metadata is
added then (ParquetWriter.add_key_value_metadata). pyarrow's own readers (geopandas included) do not read those
keys, though: they take the schema metadata from the serialized Arrow schema stored under "ARROW:schema", which the
writer would freeze at open time. So the writer is opened with store_schema=False and "ARROW:schema" is written at
close as well, serialized from the final schema: one pass over the data, nothing rewritten, and every reader sees
the same `geo`. commit() reads the footer back to check exactly that.
"""
from __future__ import annotations

import base64
import json
import math
import os
import warnings
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from rasterio.crs import CRS

from spectralgpt_jax.inference.writers import OutputError, StagedWriter, Staging
from spectralgpt_jax.tasks.reporting import _jsonable

GEOPARQUET_VERSION = "1.1.0"
GEO_KEY, METADATA_KEY = "geo", "spectralgpt"
ROW_GROUP_BYTES = 64 << 20  # rows are buffered into row groups of about this size (and at most this much memory)
_CORE = {"tile_id": pa.int64(), "row": pa.int32(), "col": pa.int32(), "geometry": pa.binary()}
_POLYGON = 3  # shapely type id


def projjson(crs) -> dict | None:
  """PROJJSON of a CRS (anything rasterio's CRS.from_user_input takes), with rasterio alone where it can."""
  if crs is None:
    return None
  crs = CRS.from_user_input(crs)
  try:
    return crs.to_dict(projjson=True)
  except TypeError:  # rasterio < 1.3 has no projjson= argument; pyproj (a geopandas dependency) has it
    import pyproj
    return pyproj.CRS.from_wkt(crs.to_wkt()).to_json_dict()


class GeoParquetWriter(StagedWriter):
  """Streams rows into a GeoParquet 1.1.0 file, written with pyarrow (zstd, row groups of ~64 MiB as rows come),
  atomic on commit. Columns: tile_id int64, row int32, col int32, geometry (ISO WKB polygons), embedding
  fixed_size_list<float32>[D], then `extra_columns` in their order. The `geo` file metadata carries the CRS as
  PROJJSON and the bbox of all geometries; `metadata` is stored as JSON under the key "spectralgpt".
  Context manager with the same failure semantics as RasterWriter: nothing at `path` unless commit() succeeds.
  """

  KIND = "GeoParquet file"

  def __init__(self, path, *, crs, embedding_dim: int, extra_columns: dict[str, pa.DataType] | None = None,
               metadata: dict | None = None):
    self.path = os.path.abspath(os.fspath(path))
    self.embedding_dim = int(embedding_dim)
    if self.embedding_dim < 1:
      raise self._fail(f"embedding_dim must be >= 1, got {embedding_dim}")
    self.extra_columns = dict(extra_columns or {})
    clash = set(self.extra_columns) & (set(_CORE) | {"embedding"})
    if clash:
      raise self._fail(f"extra columns {sorted(clash)} clash with the standard columns")
    try:
      self._crs = projjson(crs)
    except Exception as e:
      raise self._fail(f"CRS {crs!r} cannot be written as PROJJSON ({e})") from e
    self._metadata = None if metadata is None else json.dumps(_jsonable(metadata), allow_nan=False)
    self.schema = pa.schema([*_CORE.items(), ("embedding", pa.list_(pa.float32(), self.embedding_dim)),
                             *self.extra_columns.items()])
    small = ["tile_id", "row", "col", *self.extra_columns]
    self._staging = Staging(self.path)
    self._writer = None
    try:
      self._tmp = self._staging.file("data.parquet")
      self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd", store_schema=False,
                                      use_dictionary=small, write_statistics=small)
    except Exception as e:
      self.abort()
      raise self._fail(f"cannot create the Parquet file ({e})") from e
    self._pending: list[pa.Table] = []
    self._pending_rows = 0
    self._rows = 0
    self._row_group_rows = max(1024, ROW_GROUP_BYTES // (4 * self.embedding_dim + 128))
    self._bbox = [math.inf, math.inf, -math.inf, -math.inf]
    self._state = "open"

  def _fail(self, problem: str) -> OutputError:
    return OutputError(f"{self.path}: {problem}")

  # --------------------------------------------------------------------------------------------- rows
  def _ints(self, name: str, values, n: int | None, arrow_type: pa.DataType) -> pa.Array:
    a = np.asarray(values)
    if a.ndim != 1 or (n is not None and len(a) != n) or (a.size and a.dtype.kind not in "ui"):
      raise self._fail(f"{name} must be {n if n is not None else 'n'} integers, got {a.dtype} {a.shape}")
    info = np.iinfo(arrow_type.to_pandas_dtype())
    if a.size and (a.min() < info.min or a.max() > info.max):
      raise self._fail(f"{name} values {a.min()}..{a.max()} do not fit {arrow_type}")
    return pa.array(a.astype(info.dtype, copy=False), arrow_type)

  def _geometry(self, geometry, n: int) -> tuple[pa.Array, np.ndarray]:
    geoms = np.empty(len(geometry), dtype=object)
    geoms[:] = list(geometry)
    if len(geoms) != n:
      raise self._fail(f"{len(geoms)} geometries for {n} rows")
    try:
      types = shapely.get_type_id(geoms)
    except TypeError as e:
      raise self._fail(f"geometry must be shapely Polygons ({e})") from e
    bad = np.flatnonzero((types != _POLYGON) | shapely.is_empty(geoms) | shapely.has_z(geoms))
    if bad.size:
      raise self._fail(f"geometry {int(bad[0])} is {geoms[bad[0]]!r:.60}, not a non-empty 2-D Polygon")
    return pa.array(shapely.to_wkb(geoms, flavor="iso"), pa.binary()), shapely.bounds(geoms)

  def _embedding(self, embedding, n: int) -> pa.Array:
    e = np.asarray(embedding)
    if e.shape != (n, self.embedding_dim) or e.dtype.kind not in "uif":
      raise self._fail(f"embedding must be numbers [{n}, {self.embedding_dim}], got {e.dtype} {e.shape}")
    flat = pa.array(np.ascontiguousarray(e, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, self.embedding_dim)

  def _extras(self, extra: dict, n: int) -> list[pa.Array]:
    missing, unknown = set(self.extra_columns) - set(extra), set(extra) - set(self.extra_columns)
    if missing or unknown:
      raise self._fail(f"extra columns: missing {sorted(missing)}, unexpected {sorted(unknown)}")
    arrays = []
    for name, arrow_type in self.extra_columns.items():
      values = extra[name]
      try:
        array = pa.array(values.tolist() if isinstance(values, np.ndarray) and values.dtype == object else values,
                         arrow_type)
      except (pa.ArrowException, TypeError, ValueError) as e:
        raise self._fail(f"extra column {name!r} is not {arrow_type} ({e})") from e
      if len(array) != n:
        raise self._fail(f"extra column {name!r} has {len(array)} values for {n} rows")
      arrays.append(array)
    return arrays

  def add(self, *, tile_id: np.ndarray, row: np.ndarray, col: np.ndarray, geometry: Sequence[shapely.Polygon],
          embedding: np.ndarray, **extra) -> None:
    """Appends n rows: tile_id [n], row [n], col [n] (tile grid position), geometry (n tile footprints in the
    writer's CRS), embedding float32 [n, D] and one [n] sequence per extra column. Checked before anything is
    queued, so a rejected call leaves the writer as it was."""
    if self._state != "open":
      raise self._fail(f"add() after the writer was {self._state}")
    tile_ids = self._ints("tile_id", tile_id, None, pa.int64())
    n = len(tile_ids)
    columns = [tile_ids, self._ints("row", row, n, pa.int32()), self._ints("col", col, n, pa.int32())]
    wkb, bounds = self._geometry(geometry, n)
    columns += [wkb, self._embedding(embedding, n), *self._extras(extra, n)]
    if n == 0:
      return
    self._pending.append(pa.Table.from_arrays(columns, schema=self.schema))
    self._pending_rows += n
    lo, hi = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
    self._bbox = [min(self._bbox[0], lo[0]), min(self._bbox[1], lo[1]),
                  max(self._bbox[2], hi[0]), max(self._bbox[3], hi[1])]
    if self._pending_rows >= self._row_group_rows:
      self._flush()

  def _flush(self) -> None:
    if self._pending:
      table = pa.concat_tables(self._pending)
      self._writer.write_table(table, row_group_size=len(table))
      self._rows += len(table)
      self._pending, self._pending_rows = [], 0

  # --------------------------------------------------------------------------------------------- commit / abort
  def geo_metadata(self) -> dict:
    """The GeoParquet 1.1.0 `geo` metadata for the rows added so far."""
    column = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": self._crs}
    if math.isfinite(self._bbox[0]):
      column["bbox"] = [float(v) for v in self._bbox]
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}

  def _finish(self) -> str:
    """Writes the footer (with `geo`) and checks it."""
    self._flush()
    kv = {GEO_KEY: json.dumps(self.geo_metadata(), allow_nan=False)}
    if self._metadata is not None:
      kv[METADATA_KEY] = self._metadata
    serialized = self.schema.with_metadata(kv).serialize().to_pybytes()
    self._writer.add_key_value_metadata({**kv, "ARROW:schema": base64.b64encode(serialized).decode("ascii")})
    self._writer.close()
    self._check_footer(kv)
    return self._tmp

  def _check_footer(self, kv: dict) -> None:
    """Both the Parquet key/value metadata and the Arrow schema read back carry our `geo` and the exact types."""
    stored = pq.read_metadata(self._tmp)
    schema = pq.read_schema(self._tmp)
    for key, text in kv.items():
      if stored.metadata.get(key.encode()) != text.encode() or (schema.metadata or {}).get(key.encode()) != \
          text.encode():
        raise self._fail(f"metadata key {key!r} did not survive the write (pyarrow {pa.__version__})")
    if not schema.remove_metadata().equals(self.schema) or stored.num_rows != self._rows:
      raise self._fail(f"the file read back has schema {schema} / {stored.num_rows} rows, expected {self._rows}")

  def _close_file(self) -> None:
    if self._writer is not None:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        self._writer.close()
