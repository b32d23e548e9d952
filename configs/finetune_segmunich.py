r"""SpectralGPT fine-tuning on SegMunich (13-class semantic segmentation of 128 px Sentinel-2 tiles; OA, mIoU).

Variants (`get_config(arg)`, arg = "<variant>[,<size>]", size B | L, default B):

  paper       (default) seg_vit_<size>_patch8_128 (encoder -> 4->1 spectral merge -> four-branch neck -> PPM + FPN
              -> 3x3 classifier, as the reference), the paper's settings: batch 96, AdamW, blr 5e-4 (lr = 5e-4 *
              96 / 256 = 1.875e-4), random flips and 90 degree rotations, cross-entropy ignoring label 255; where the
              paper is silent, the released code's values: weight decay 1e-5 on every parameter, 15 warmup epochs
              from 1e-3 x lr, then poly(0.9) to 250 epochs, drop path 0.5. The ten SegMunich bands are completed to
              the model's 12 with the per-pixel band mean at the B08 / B09 positions (the reference appends them
              instead: `--config.data.append_missing_bands=True`). Evaluated on the test tiles (the 8:2 split of
              the dataset's lists): OA, per-class IoU and mIoU over all 13 classes, background included (a class
              absent from both the labels and the predictions has no IoU and is left out of the mean).
                python main.py --config=configs/finetune_segmunich.py --workdir=runs/segmunich \
                    --config.init_from=SpectralGPT+.pth --config.data.data_dir=$TFDS_DATA_DIR
  reference   the released code: lr 1e-4, weight decay 1e-5, poly schedule with 15 warmup epochs, 250 epochs,
              batch 64 (32 x 2 GPUs), the missing bands appended after the ten (`append_missing_bands=True`).
  demo        CPU minutes: SegMunich-like tiles of the embedded CC0 scene with land-cover maps derived from
              spectral indices (docs/tasks.md); a small encoder (from the pretraining demo's export when present,
              its position embeddings interpolated to 64 px) and a narrow neck, 64 px windows.
                python main.py --config=configs/finetune_segmunich.py:demo --workdir=runs/segmunich_demo
              --config.data.data_dir=DIR trains the same model on the prepared SegMunich (128 px tiles cut into
              64 px windows; evaluation blends the windows back into whole tiles).

Evaluate: --config.mode=eval --config.init_from=CKPT -> W/eval/metrics.json (oa, miou, iou, split,
num_examples), predictions.npz (confusion), per_class.json, confusion_matrix.png. The released SegMunich
checkpoint (`{'model': state_dict}`) saw the reference band layout, so evaluate it with the `reference` variant:
  python main.py --config=configs/finetune_segmunich.py:reference --config.mode=eval \
      --config.init_from=model_3con_loss_51_0.pth --config.data.data_dir=$TFDS_DATA_DIR --workdir=W
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root: configs.common
from configs import common  # noqa: E402


def dense_recipe(c, *, arch: str, dataset: str, batch: int, epochs: float):
  c.model = common.model_section(arch)
  c.model.num_classes = 0           # from the dataset
  c.data = common.data_section(dataset, 128, "finetune")
  c.batch_size, c.eval_batch_size = batch, 32
  c.total_epochs = epochs
  c.optimizer.update(dict(b2=0.999, weight_decay=1e-5, decay_1d=True, decay_pos_embed=True))
  c.eval_every, c.checkpoint_every = 1000, 1000


def dense_demo(c, *, arch: str, dataset: str, steps: int, **model):
  widths = dict(img_size=64, embed_dim=128, depth=4, num_heads=4, drop_path_rate=0.1, pos_embed_resize="interpolate",
                neck_channels=(32, 32, 64, 128), fpn_channels=32)
  c.model = common.model_section(arch, **{**widths, **model})
  c.model.num_classes = 0
  c.data = common.data_section(dataset, 64, "finetune", demo=True, data_dir="")
  c.batch_size, c.eval_batch_size = 16, 16
  c.optimizer.update(dict(lr=1e-3, schedule="cosine", weight_decay=0.05, decay_1d=False, decay_pos_embed=False))
  common.cpu_demo(c, steps=steps, warmup=30, every=steps // 4)
  c.init_from = common.demo_init_from()


def get_config(arg=None):
  variant, size = common.parse_arg(arg, config="finetune_segmunich", variants=("paper", "reference", "demo"),
                                   default="paper", sizes="BL")
  c = common.base("segmentation")
  dense_recipe(c, arch=f"seg_vit_{common.SIZES[size]}_patch8_128", dataset="segmunich", batch=96, epochs=250.0)
  c.optimizer.update(dict(blr=5e-4, schedule="poly", poly_power=0.9, warmup_start=1e-3))
  c.warmup_epochs = 15.0
  if variant == "reference":
    c.batch_size = 64
    c.optimizer.lr = 1e-4
    c.data.append_missing_bands = True
  elif variant == "demo":
    dense_demo(c, arch="seg_vit_tiny", dataset="segmunich", steps=400)
  return c
