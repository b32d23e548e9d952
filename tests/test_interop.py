"""Checkpoint import: key/shape coverage of the base models, bad and malicious files, size changes, the CLI."""
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from spectralgpt_jax import export, models
from spectralgpt_jax.interop import (CheckpointError, CheckpointMismatchError, UnsafeCheckpointError, keymap,
                                     load_pth, load_reference_checkpoint)
from spectralgpt_jax.interop import convert
from torch_zip import write_pth

REF = Path(__file__).parent / "data" / "reference"


def tiny_state_dict():
  return {k: v for k, v in np.load(REF / "mae_tiny_state_dict.npz").items()}


@pytest.mark.parametrize("arch,key,extra", [
    ("mae_vit_base_patch8_128", "mae_vit_base_patch8_128", {}),
    ("vit_base_patch8_128", "vit_base_patch8_128(num_classes=10)", {"reference_pos_embed": True})])
def test_converter_covers_every_official_base_key(arch, key, extra):
  expected = json.loads((REF / "base_keys.json").read_text())[key]
  model = nnx.eval_shape(lambda: models.build(arch, **extra))
  ours = {keymap.torch_key(p): list(keymap.torch_shape(p, tuple(v.shape), model.cfg))
          for p, v in keymap.param_paths(model)}
  assert ours == expected


def test_reader_refuses_code_execution(tmp_path):
  marker = tmp_path / "pwned"

  class Exploit:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"model": Exploit()}, protocol=2))
  with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*(posix|os)\.system"):
    load_pth(path)
  assert not marker.exists()


def test_truncated_and_non_zip_files(tmp_path):
  sd = tiny_state_dict()
  missing_storage = tmp_path / "missing_storage.pth"
  write_pth(missing_storage, sd, drop_storage=3)
  with pytest.raises(CheckpointError, match=r"missing_storage\.pth.*data/3"):
    load_pth(missing_storage)
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes((REF / "mae_tiny.pth").read_bytes()[:50_000])
  with pytest.raises(CheckpointError, match="truncated.pth"):
    load_pth(truncated)
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"this is not a checkpoint")
  with pytest.raises(CheckpointError, match="garbage.pth: not a"):
    load_pth(garbage)
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    load_pth(tmp_path / "nope.pth")


def test_written_pth_roundtrips_through_reader(tmp_path):
  sd = tiny_state_dict()
  write_pth(tmp_path / "copy.pth", sd)
  loaded = load_pth(tmp_path / "copy.pth")["model"]
  assert list(loaded) == list(sd)
  for k in sd:
    np.testing.assert_array_equal(loaded[k], sd[k])


def test_mis_shaped_and_missing_keys_are_named(tmp_path):
  sd = tiny_state_dict()
  sd["blocks.1.mlp.fc1.weight"] = np.zeros((64, 32), np.float32)
  del sd["decoder_norm.bias"]
  sd["extra.weight"] = np.zeros(3, np.float32)
  write_pth(tmp_path / "bad.pth", sd)
  with pytest.raises(CheckpointMismatchError) as err:
    load_reference_checkpoint(tmp_path / "bad.pth", arch="mae_vit_tiny")
  message = str(err.value)
  assert "blocks.1.mlp.fc1.weight: checkpoint (64, 32) vs model (128, 32)" in message
  assert "1 missing (decoder_norm.bias)" in message and "1 unexpected (extra.weight)" in message
  assert "\n" not in message   # one line; the report has the details
  model, report = load_reference_checkpoint(tmp_path / "bad.pth", arch="mae_vit_tiny", strict=False)
  assert len(report.loaded) == 61 and not report.ok


def test_checkpoint_of_another_shape_entirely(tmp_path):
  with pytest.raises(CheckpointMismatchError, match=r"39 mismatched \(.*blocks\.0\.\* \(16 params\)") as err:
    load_reference_checkpoint(REF / "mae_tiny.pth", arch="mae_vit_tiny", embed_dim=64, num_heads=2)
  assert len(err.value.report.mismatched) == 39
  assert "blocks.0.attn.k.weight: checkpoint (32, 32) vs model (64, 64)" in err.value.report.summary()


def test_architecture_is_inferred():
  model, report = load_reference_checkpoint(REF / "mae_tiny.pth")
  assert report.arch == "mae_vit_tiny" and report.ok


def test_smaller_image_checkpoint_into_larger_model(tmp_path):
  """The 96 -> 128 px case in miniature: a 16 px (2x2) checkpoint into a 32 px (4x4) model."""
  sd = tiny_state_dict()
  sd["pos_embed_spatial"] = np.full((1, 4, 32), 0.5, np.float32)
  write_pth(tmp_path / "small.pth", sd)
  fresh = models.build("mae_vit_tiny", img_size=32, seed=3)
  model, report = load_reference_checkpoint(tmp_path / "small.pth", arch="mae_vit_tiny", img_size=32, seed=3)
  assert {r.split(":")[0] for r in report.initialised} == {"pos_embed_spatial", "decoder_pos_embed_spatial"}
  np.testing.assert_array_equal(model.encoder.pos_embed.spatial[...], fresh.encoder.pos_embed.spatial[...])
  np.testing.assert_array_equal(model.encoder.pos_embed.spectral[...], sd["pos_embed_temporal"])
  model, report = load_reference_checkpoint(tmp_path / "small.pth", arch="mae_vit_tiny", img_size=32,
                                            pos_embed_resize="interpolate")
  assert len(report.interpolated) == 2 and not report.initialised
  np.testing.assert_allclose(model.encoder.pos_embed.spatial[...], 0.5, atol=1e-6)   # constant stays constant
  assert model.encoder.pos_embed.spatial[...].shape == (1, 16, 32)


def test_convert_cli_writes_loadable_export(tmp_path, capsys):
  out = tmp_path / "converted"
  assert convert.main(["--checkpoint", str(REF / "mae_tiny.pth"), "--arch", "mae_vit_tiny", "--out", str(out)]) == 0
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata["bands"][8] == "B8A" and len(metadata["bands"]) == 12 and "B10" not in metadata["bands"]
  assert metadata["normalization"]["name"] == "minmax_per_image" and metadata["image_size"] == 16
  assert metadata["param_count"] == 39_152
  model, _ = export.load(out)
  reference, _ = load_reference_checkpoint(REF / "mae_tiny.pth", arch="mae_vit_tiny")
  for (p, a), (_, b) in zip(keymap.param_paths(model), keymap.param_paths(reference)):
    np.testing.assert_array_equal(a[...], b[...], err_msg=str(p))
  assert convert.main(["--checkpoint", str(tmp_path / "absent.pth"), "--out", str(out)]) == 1
  assert "absent.pth" in capsys.readouterr().err


def test_reader_matches_torch_and_reads_legacy_files_with_the_torch_extra(tmp_path):
  torch = pytest.importorskip("torch")   # optional extra: `pip install -e ".[torch]"`
  ours = load_pth(REF / "mae_tiny.pth")["model"]
  theirs = torch.load(REF / "mae_tiny.pth", map_location="cpu", weights_only=True)["model"]
  assert list(ours) == list(theirs)
  for key, value in theirs.items():
    np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)
  legacy = tmp_path / "legacy.pth"
  torch.save({"model": theirs}, legacy, _use_new_zipfile_serialization=False)
  model, report = load_reference_checkpoint(legacy, arch="mae_vit_tiny")
  assert report.ok and len(report.loaded) == 63

  class Exploit:
    def __reduce__(self):
      return (os.system, ("true",))

  evil = tmp_path / "evil_legacy.pth"
  torch.save({"model": Exploit()}, evil, _use_new_zipfile_serialization=False)
  with pytest.raises(UnsafeCheckpointError, match="evil_legacy.pth"):
    load_pth(evil)
