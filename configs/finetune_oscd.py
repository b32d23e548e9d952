r"""SpectralGPT fine-tuning on OSCD (Sentinel-2 change detection between two dates; F1 of the change class).

Variants (`get_config(arg)`, arg = "<variant>[,<size>]", size B | L, default B):

  paper       (default) cd_vit_<size>_patch8_128: a siamese encoder (shared weights) on both dates, merged
              features of date 1 minus date 2, the segmentation neck / head without the SegMunich-only dropouts
              (the FPN fuse dropouts stay, as in the reference), 2 classes. The
              paper's settings: 128 px patches with 50 % overlap, random flips and rotations, NLL loss with the
              reference's class weights from the training maps, batch 64, lr 1e-3, 60 epochs; where the paper is
              silent the released code's: AdamW, weight decay 1e-5 on every parameter, lr x 0.95 per epoch.
              Evaluated on the whole test cities: sliding windows with 50 % overlap whose logits are blended, every
              pixel counted exactly once; precision, recall, F1 (change class) and OA.
                python main.py --config=configs/finetune_oscd.py --workdir=runs/oscd \
                    --config.init_from=SpectralGPT+.pth --config.data.data_dir=$TFDS_DATA_DIR
  reference   the released code: lr 1e-4, weight decay 1e-5, 0.95 / epoch, 300 epochs, batch 32, no
              pretraining, the reference's stride-63 windows, and its test: every overlapping window counted on its
              own, the incomplete last batch dropped (`metrics.reference_patches=True`).
  demo        CPU minutes: OSCD-like city pairs cut from the embedded CC0 scene, the second date with a simulated
              acquisition difference and patches of other land cover pasted in (docs/tasks.md); 64 px windows.
                python main.py --config=configs/finetune_oscd.py:demo --workdir=runs/oscd_demo

Evaluate: --config.mode=eval --config.init_from=CKPT -> W/eval/metrics.json (precision, recall, f1, oa, split,
num_examples), predictions.npz (confusion), per_class.json, confusion_matrix.png. The official OSCD file (a raw
`module.`-prefixed state dict) is evaluated with --config.init_from=spectralGPT+_54_28.pth.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root: configs.common
from configs import common  # noqa: E402
from configs import finetune_segmunich as segmunich  # noqa: E402


def get_config(arg=None):
  variant, size = common.parse_arg(arg, config="finetune_oscd", variants=("paper", "reference", "demo"),
                                   default="paper", sizes="BL")
  c = common.base("change_detection")
  segmunich.dense_recipe(c, arch=f"cd_vit_{common.SIZES[size]}_patch8_128", dataset="oscd", batch=64, epochs=60.0)
  c.optimizer.update(dict(lr=1e-3, schedule="exponential", decay_rate=0.95))
  c.warmup_epochs = 0.0
  c.loss.class_weights = "reference"
  c.metrics.reference_patches = False
  c.eval_every, c.checkpoint_every = 200, 200
  if variant == "reference":
    c.optimizer.lr = 1e-4
    c.total_epochs = 300.0
    c.batch_size = 32
    c.data.reference_windows = True
    c.metrics.reference_patches = True
  elif variant == "demo":
    segmunich.dense_demo(c, arch="cd_vit_tiny", dataset="oscd", steps=400)
    c.batch_size = 8                # two dates per example: half SegMunich's batch for the same step time
  return c
