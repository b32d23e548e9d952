"""What an evaluation writes: JSON metrics, per-class tables, confusion-matrix PNGs, raw predictions.

numpy + Pillow only (no JAX, no matplotlib). Every file is written atomically (a temporary file in the same
directory, then os.replace), so a crash or a pre-empted job never leaves a truncated report that a later reader
would take for a result. Paths are local filesystem paths.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_LABEL_CHARS = 32     # long class names (BigEarthNet-19) are cut so the image stays readable
TEXT_MAX_CLASSES = 20    # above this many classes the cells are too small for counts
GRID_COLUMNS = 5         # panels per row of the multi-label grid
# Light to dark blue (matplotlib's "Blues" stops), indexed by the row-normalised fraction.
_BLUES = np.array([(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)], np.float64)
_EMPTY_ROW = (225, 225, 225)


# ----------------------------------------------------------------------------------------------- files
def _atomic_write(path: str, write: Callable) -> str:
  """Calls write(binary file) on a temporary file next to `path`, then renames it onto `path`."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a report should be as readable as any other output
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def _jsonable(obj):
  """Plain JSON types: numpy scalars/arrays to Python, tuples to lists, NaN and +-inf to None (JSON has none)."""
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  if isinstance(obj, np.generic):
    return _jsonable(obj.item())
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  return obj


def write_json(path: str, obj, indent: int = 2) -> str:
  """Writes `obj` as JSON atomically; NaN / inf become null, numpy values plain numbers and lists."""
  text = json.dumps(_jsonable(obj), indent=indent, allow_nan=False) + "\n"
  return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _storable(name: str, value) -> np.ndarray:
  a = np.asarray(value)
  if a.dtype == object:
    items = a.ravel().tolist()
    if not all(isinstance(v, str) for v in items):
      raise TypeError(f"array {name!r} holds Python objects; only numbers and strings can be saved (no pickle)")
    a = np.array(items, dtype=str).reshape(a.shape)
  return a


def save_predictions(path: str, **arrays) -> str:
  """Writes the arrays to an .npz (deflate-compressed, as np.savez_compressed) atomically, readable with np.load
  without allow_pickle. String ids become a unicode array; object arrays are refused. `path` is used as given
  (no .npz suffix is appended). Written member by member, so any keyword (even `file`) is a valid array name."""
  arrays = {k: _storable(k, v) for k, v in arrays.items()}

  def write(f):
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
      for name, a in arrays.items():
        with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
          np.lib.format.write_array(member, a, allow_pickle=False)

  return _atomic_write(path, write)


# ----------------------------------------------------------------------------------------------- tables
def _cell(value, float_format: str) -> str:
  if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
    return "-"
  if isinstance(value, (bool, np.bool_, int, np.integer, str)):
    return str(value)
  return format(float(value), float_format)


def per_class_table(
    class_names: Sequence[str], columns: Mapping[str, Sequence], float_format: str = ".4f"
) -> tuple[str, list[dict]]:
  """(fixed-width text table for the log, the same rows as dicts for JSON) of per-class columns.

  Each column has one value per class; floats are printed with `float_format`, NaN / None as "-" (in the row
  dicts they are None, i.e. JSON null).
  """
  names = [str(n) for n in class_names]
  for key, values in columns.items():
    if len(values) != len(names):
      raise ValueError(f"column {key!r} has {len(values)} values for {len(names)} classes")
  headers = ["class"] + list(columns)
  body = [[name] + [_cell(columns[c][r], float_format) for c in columns] for r, name in enumerate(names)]
  widths = [max(len(h), *(len(row[j]) for row in body)) if body else len(h) for j, h in enumerate(headers)]

  def line(cells):
    return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

  text = "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in body])
  rows = [{"class": name, **{c: _jsonable(columns[c][r]) for c in columns}} for r, name in enumerate(names)]
  return text, rows


# ----------------------------------------------------------------------------------------------- images
def _font(size: int):
  try:
    return ImageFont.load_default(size=size)  # scalable (FreeType) font, Pillow >= 10.1
  except (TypeError, OSError, ImportError):
    return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
  left, top, right, bottom = font.getbbox(text)
  return right - left, bottom - top


def _shorten(name: str) -> str:
  name = str(name)
  return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 3] + "..."


def _colour(fraction: float) -> tuple[int, int, int]:
  pos = min(max(fraction, 0.0), 1.0) * (len(_BLUES) - 1)
  lo = min(int(pos), len(_BLUES) - 2)
  c = _BLUES[lo] + (pos - lo) * (_BLUES[lo + 1] - _BLUES[lo])
  return tuple(int(round(v)) for v in c)


def _draw_rotated(canvas: Image.Image, xy: tuple[int, int], text: str, font, fill=(0, 0, 0)):
  """Text rotated 90 degrees counter-clockwise (reading bottom to top) with its top-left corner at xy."""
  left, top, right, bottom = font.getbbox(text)
  mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
  ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
  mask = mask.rotate(90, expand=True)
  canvas.paste(Image.new("RGB", mask.size, fill), xy, mask)


def _cell_text(draw: ImageDraw.ImageDraw, box, lines, ink, gap: int = 3):
  """Lines of (text, font) centred in the cell `box`, one under the other."""
  heights = [_text_size(f, t)[1] for t, f in lines]
  y = box[1] + (box[3] - box[1] + 1 - sum(heights) - gap * (len(lines) - 1)) // 2
  for (t, f), h in zip(lines, heights):
    x0, y0, x1, _ = f.getbbox(t)
    draw.text((box[0] + (box[2] - box[0] + 1 - (x1 - x0)) // 2 - x0, y - y0), t, font=f, fill=ink)
    y += h + gap


def _matrix_image(cm: np.ndarray, row_names, col_names, title: str = "", axis_captions: bool = True) -> Image.Image:
  """RGB image of a confusion matrix: cells coloured by the row-normalised fraction (recall of that row's class),
  raw count and row percentage written in each cell when there are at most TEXT_MAX_CLASSES classes."""
  cm = np.asarray(cm, np.int64)
  k = cm.shape[0]
  show_text = k <= TEXT_MAX_CLASSES
  font, small = _font(14), _font(11)
  rows = cm.sum(axis=1)
  frac = np.divide(cm, rows[:, None], out=np.zeros(cm.shape), where=rows[:, None] > 0)
  pad = 6
  if show_text:
    counts = [[f"{v:,}" for v in r] for r in cm]
    text_w = max(_text_size(font, t)[0] for r in counts for t in r)
    line_h = _text_size(font, "0,9%")[1]
    cell = max(40, text_w + 2 * pad, 2 * line_h + 3 * pad)
  else:
    cell = max(6, min(36, 900 // k))
  label_font = font if cell >= 18 else _font(max(6, cell - 4))
  show_names = cell >= 8
  row_names = [_shorten(n) for n in row_names]
  col_names = [_shorten(n) for n in col_names]
  name_w = max(_text_size(label_font, n)[0] for n in row_names) if show_names else 0
  col_h = max(_text_size(label_font, n)[0] for n in col_names) if show_names else 0
  caption_h = _text_size(font, "Predicted")[1] + pad if axis_captions else 0
  title_h = _text_size(font, title)[1] + 2 * pad if title else 0
  left = pad + caption_h + name_w + pad
  top = pad + title_h + caption_h + col_h + pad
  width = max(left + k * cell + pad, _text_size(font, title)[0] + 2 * pad if title else 0)
  img = Image.new("RGB", (width, top + k * cell + pad), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  if title:
    draw.text((pad, pad), title, font=font, fill=(0, 0, 0))
  if axis_captions:
    grid = k * cell
    draw.text((left + max(0, (grid - _text_size(font, "Predicted")[0]) // 2), pad + title_h), "Predicted", font=font,
              fill=(0, 0, 0))
    _draw_rotated(img, (pad, top + max(0, (grid - _text_size(font, "True")[0]) // 2)), "True", font)
  for j in range(k):
    if show_names:
      tw, th = _text_size(label_font, row_names[j])
      draw.text((left - pad - tw, top + j * cell + (cell - th) // 2), row_names[j], font=label_font, fill=(0, 0, 0))
      cw, ch = _text_size(label_font, col_names[j])
      _draw_rotated(img, (left + j * cell + (cell - ch) // 2, top - pad - cw), col_names[j], label_font)
  for i in range(k):
    for j in range(k):
      box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
      draw.rectangle(box, fill=_colour(frac[i, j]) if rows[i] else _EMPTY_ROW, outline=(255, 255, 255))
      if show_text:
        lines = [(counts[i][j], font)] + ([(f"{100 * frac[i, j]:.1f}%", small)] if rows[i] else [])
        _cell_text(draw, box, lines, (255, 255, 255) if frac[i, j] > 0.5 else (0, 0, 0))
  return img


def _save_png(path: str, img: Image.Image) -> str:
  return _atomic_write(path, lambda f: img.save(f, format="PNG"))


def confusion_png(path: str, cm, class_names: Sequence[str], title: str = "") -> str:
  """PNG heatmap of a [K, K] confusion matrix (rows true, cols predicted), colours row-normalised so that small
  classes are as visible as large ones; counts and row percentages are written in the cells when K <= 20."""
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
    raise ValueError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
  return _save_png(path, _matrix_image(cm, class_names, class_names, title))


def multilabel_confusion_png(path: str, mcm, class_names: Sequence[str], title: str = "") -> str:
  """PNG grid of per-class 2x2 matrices [[tn, fp], [fn, tp]] (from metrics.multilabel_confusion), one panel per
  class with the class name above it, GRID_COLUMNS panels per row."""
  mcm = np.asarray(mcm)
  if mcm.ndim != 3 or mcm.shape[1:] != (2, 2) or mcm.shape[0] != len(class_names):
    raise ValueError(f"multi-label confusion {mcm.shape} does not match {len(class_names)} class names")
  panels = [_matrix_image(m, ("neg", "pos"), ("neg", "pos"), axis_captions=False) for m in mcm]
  font, pad = _font(13), 8
  name_h = _text_size(font, "Ag")[1] + pad
  pw, ph = max(p.width for p in panels), max(p.height for p in panels) + name_h
  cols = min(GRID_COLUMNS, len(panels))
  grid_rows = math.ceil(len(panels) / cols)
  title_h = _text_size(font, title)[1] + 2 * pad if title else 0
  img = Image.new("RGB", (cols * (pw + pad) + pad, title_h + grid_rows * (ph + pad) + pad), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  if title:
    draw.text((pad, pad), title, font=font, fill=(0, 0, 0))
  for c, (panel, name) in enumerate(zip(panels, class_names)):
    x, y = pad + (c % cols) * (pw + pad), title_h + pad + (c // cols) * (ph + pad)
    label = str(name)
    while len(label) > 4 and _text_size(font, label)[0] > pw:
      label = label[:-4] + "..."
    draw.text((x, y), label, font=font, fill=(0, 0, 0))
    img.paste(panel, (x, y + name_h))
  return _save_png(path, img)
