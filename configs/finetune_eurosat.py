r"""SpectralGPT fine-tuning on EuroSAT-MS (10-class scene classification, top-1 accuracy on the validation split).

Variants (`get_config(arg)`, arg = "<variant>[,<size>]", size B | L | H, default B):

  paper       (default) the paper's recipe: vit_<size>_patch8_128, 150 epochs, global batch 512, AdamW(0.9, 0.999),
              blr 2e-4 (lr = blr * 512 / 256 = 4e-4), weight decay 0.05 (not on position embeddings or 1-D
              params), layer-wise lr decay 0.75, drop path 0.1, mixup 0.8 / cutmix 1.0 / label smoothing 0.1,
              20 warmup epochs then cosine; the Neumann et al. (torchgeo) train/val split; mean-pooled encoder ->
              LayerNorm -> head; soft-target cross-entropy.
                python main.py --config=configs/finetune_eurosat.py --workdir=runs/eurosat \
                    --config.init_from=SpectralGPT+.pth --config.data.data_dir=$TFDS_DATA_DIR
  reference   the released code's README command: effective batch 256 (16 x 8 x 2 GPUs), drop path 0.2, the
              reference classifier (pools tokens[1:], joint zero-initialised position embedding). Its command
              also lacks --nb_classes 10 (a 62-way head): add --config.model.num_classes=62 to reproduce that.
  demo        CPU minutes on real Sentinel-2 pixels: EuroSAT-like 64 px patches of the embedded CC0 scene with
              land-cover labels derived from spectral indices (docs/tasks.md), a 48 px ViT (embed 128, depth 4)
              initialised from the pretraining demo's export (runs/demo/export) when it exists.
                python main.py --config=configs/finetune_eurosat.py:demo --workdir=runs/eurosat_demo
              With --config.data.data_dir=DIR it trains the same small model on the prepared EuroSAT instead.

Evaluate any checkpoint (a run or export directory, or an official .pth):
  python main.py --config=configs/finetune_eurosat.py --config.mode=eval --config.init_from=CKPT --workdir=W
-> W/eval/metrics.json (top1, top5, split, num_examples), predictions.npz, per_class.json, confusion_matrix.png.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root: configs.common
from configs import common  # noqa: E402


def classification_recipe(c, *, dataset: str, size: str, blr: float):
  """The paper's classification fine-tuning recipe (EuroSAT; BigEarthNet changes the data, loss and blr)."""
  c.model = common.model_section(f"vit_{common.SIZES[size]}_patch8_128", drop_path_rate=0.1, num_classes=1)
  c.model.num_classes = 0           # from the dataset's class names
  c.data = common.data_section(dataset, 128, "finetune")
  c.batch_size, c.eval_batch_size = 512, 256
  c.total_epochs, c.warmup_epochs = 150.0, 20.0
  c.optimizer.update(dict(blr=blr, b2=0.999, weight_decay=0.05, layer_decay=0.75, decay_pos_embed=False,
                          min_lr=1e-14))
  c.eval_every, c.checkpoint_every = 500, 500


def reference_classifier(c):
  """The released code's classification settings on top of the recipe."""
  c.batch_size = 256
  c.model.drop_path_rate = 0.2
  c.model.reference_pooling = True
  c.model.reference_pos_embed = True


def demo_classifier(c, *, dataset: str, steps: int):
  c.model = common.model_section("vit_tiny", img_size=48, embed_dim=128, depth=4, num_heads=4, drop_path_rate=0.1)
  c.model.num_classes = 0
  c.data = common.data_section(dataset, 48, "finetune", demo=True, data_dir="")
  c.batch_size, c.eval_batch_size = 32, 64
  c.optimizer.blr = 1e-3 * 256 / 32          # lr 1e-3 for a 1M-parameter model
  c.optimizer.layer_decay = 0.75
  common.cpu_demo(c, steps=steps, warmup=50, every=steps // 4)
  c.init_from = common.demo_init_from()


def get_config(arg=None):
  variant, size = common.parse_arg(arg, config="finetune_eurosat", variants=("paper", "reference", "demo"),
                                   default="paper")
  c = common.base("classification")
  classification_recipe(c, dataset="eurosat", size=size, blr=2e-4)
  if variant == "reference":
    reference_classifier(c)
  elif variant == "demo":
    demo_classifier(c, dataset="eurosat", steps=400)
  return c
