"""Reading examples in parallel for the builders: local worker processes, or an Apache Beam pipeline.

Both paths read exactly what the single-process path reads, with the same keys, and tfds orders the examples of
a split by a hash of the key, so the prepared files hold the same examples in the same order (tested).

* Local (`num_workers > 1`): a `spawn` process pool reads the items, the builder's process encodes and writes.
  Results come back in item order, so `on_error` behaves as in one process (raise at the first bad file).
* Beam (`beam=True`): the read is a `beam.PTransform`, which tfds runs on the pipeline built from
  `DownloadConfig.beam_options` (DirectRunner, Dataflow, Flink, Spark...). Every bad file goes to a side output
  that is written next to the prepared files; the builder reads it back once the pipeline has finished, so the
  report lists every skipped file with its reason, and `on_error="raise"` fails naming the first bad files (a
  distributed job cannot stop at the first one).
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from etils import epath

from spectralgpt_jax.data.readers.common import DataError

BAD_FILES_PREFIX = "beam_bad_files"   # shards <prefix>-NNNNN-of-NNNNN under the prepared dataset's folder


# ----------------------------------------------------------------------------------------------------- local pool
_worker_read: Callable | None = None


def _init_worker(read_one: Callable) -> None:
  global _worker_read
  _worker_read = read_one     # sent once per worker, not with every item (a reader can hold large lists)


def _read_chunk(chunk: list) -> list:
  out = []
  for item in chunk:
    try:
      out.append((item, _worker_read(item)))
    except DataError as e:
      out.append((item, e))
  return out


def pool_results(items: Iterable, read_one: Callable, num_workers: int) -> Iterator[tuple[object, object]]:
  """(item, example or the DataError it raised), in item order, read by `num_workers` spawned processes.

  At most 4 chunks per worker are in flight, so examples never pile up in memory faster than they are written.
  `spawn` rather than `fork`: the parent may hold JAX / XLA threads (tests, notebooks), which fork would copy
  in an undefined state."""
  items = list(items)
  size = max(1, min(32, len(items) // (8 * num_workers)))
  chunks = iter([items[i:i + size] for i in range(0, len(items), size)])
  context = multiprocessing.get_context("spawn")
  with futures.ProcessPoolExecutor(num_workers, context, _init_worker, (read_one,)) as pool:
    pending = collections.deque(pool.submit(_read_chunk, c) for c in itertools.islice(chunks, 4 * num_workers))
    while pending:
      try:
        done = pending.popleft().result()
      except BrokenProcessPool as e:
        raise RuntimeError("the reader processes died (out of memory, or a script that calls prepare with "
                           "num_workers > 1 without an `if __name__ == '__main__':` guard)") from e
      pending.extend(pool.submit(_read_chunk, c) for c in itertools.islice(chunks, 1))
      yield from done


def unwrap(result: tuple[object, object]):
  """The example of a `pool_results` pair, or raise its DataError (for `common.guarded`)."""
  _, out = result
  if isinstance(out, DataError):
    raise out
  return out


# ----------------------------------------------------------------------------------------------------------- beam
def _read_or_tag(item, read_one: Callable, name_of: Callable):
  from apache_beam import pvalue

  try:
    ex = read_one(item)
  except DataError as e:
    yield pvalue.TaggedOutput("bad", json.dumps([str(name_of(item)), str(e)]))
    return
  yield ex["id"], ex


def beam_examples(items: list, read_one: Callable, name_of: Callable, bad_files_prefix: str):
  """A `beam.PTransform` yielding (key, example) for tfds, writing each bad file (name, reason) to
  `bad_files_prefix` shards as JSON lines."""
  import apache_beam as beam

  @beam.ptransform_fn
  def read_split(root):
    out = (root
           | "List" >> beam.Create(items)
           | "Spread" >> beam.Reshuffle()   # Create makes one bundle: without this one worker would read it all
           | "Read" >> beam.FlatMap(_read_or_tag, read_one, name_of).with_outputs("bad", main="examples"))
    _ = out.bad | "BadFiles" >> beam.io.WriteToText(bad_files_prefix)
    return out.examples

  return read_split()


def read_bad_files(folder: str, failed: bool = False) -> list[tuple[str, str]]:
  """Every (file, reason) the Beam readers wrote under `folder`, sorted, and remove those shards. After a failed
  pipeline the text sink was never finalised: then its temporary files (`beam-temp-<prefix>-*`) are read, which
  holds what the finished bundles wrote."""
  root = epath.Path(folder)
  shards = list(root.glob(f"{BAD_FILES_PREFIX}*"))
  if failed:
    shards += [f for d in root.glob(f"beam-temp-{BAD_FILES_PREFIX}*") for f in d.iterdir()]
  bad = []
  for shard in sorted(shards):
    bad += [tuple(json.loads(line)) for line in shard.read_text().splitlines() if line.strip()]
    shard.unlink()
  return sorted(set(bad))


def beam_options(flags: str | None):
  """`PipelineOptions` from a command-line string; the DirectRunner when none is given."""
  import shlex

  try:
    from apache_beam.options.pipeline_options import PipelineOptions
  except ImportError as e:
    raise ImportError("--beam needs Apache Beam: pip install -e \".[beam]\"") from e
  return PipelineOptions(shlex.split(flags or "--runner=DirectRunner"))

