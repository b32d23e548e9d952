r"""SpectralGPT masked-autoencoder pretraining (Hong et al., IEEE TPAMI 2024), with the reference recipe
(danfenghong/IEEE_TPAMI_SpectralGPT: main_pretrain.py and its README commands).

Variants (`get_config(arg)`, arg = "<dataset>[,<size>]" with size B | L | H, default B):

  demo          Real data, laptop scale: the CC0 Sentinel-2 scene embedded in the data layer, a small MAE
                (1M params: embed 128, depth 4, decoder 64 x 2) at 48 px, 1200 steps of 32. See docs/training.md
                for the measured time on a 2-core CPU; rerunning the command resumes.
                  python main.py --config=configs/pretrain.py:demo --workdir=runs/demo
  fmow          Stage 1 (SpectralGPT): fMoW-Sentinel at 96 px, mae_vit_<size>_patch8_96, mask ratio 0.90,
                blr 2e-4, global batch 4096 (the reference's 16 x 32 accumulation x 8 GPUs), 200 epochs, 20 warmup.
                  python main.py --config=configs/pretrain.py:fmow,B --workdir=gs://BUCKET/spectralgpt/stage1
  bigearthnet   Stage 2 (SpectralGPT+): BigEarthNet-S2 at 128 px, mae_vit_<size>_patch8_128, blr 1e-4, 200 epochs
                (the README command; the README text says 100), initialised from a stage-1 run. The spatial
                position embeddings are re-initialised as the reference does (96 -> 128 px); set
                --config.model.pos_embed_resize=interpolate for bicubic resizing instead (a deviation).
                  python main.py --config=configs/pretrain.py:bigearthnet,B --workdir=gs://BUCKET/spectralgpt/stage2 \
                      --config.init_from=gs://BUCKET/spectralgpt/stage1/export

Common overrides:
  --config.data.name=bigearthnet_v2                             stage 2 on BigEarthNet v2.0 (reBEN), same recipe
  --config.batch_size=256 --config.optimizer.accum_steps=4     global batch, split into 4 micro-batches per step
  --config.mesh.fsdp=-1 --config.mesh.model=2                   FSDP over the remaining devices, 2-way tensor parallel
  --config.compute_dtype=float32                                matmuls in fp32 (params/optimizer/loss always fp32)
  --config.total_steps=1000                                     step budget instead of epochs
  --config.data.data_dir=/path/to/tensorflow_datasets           prepared TFDS data (see docs/data.md)
The learning rate is blr * batch_size / 256 unless --config.optimizer.lr is set.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root: configs.common
from configs import common  # noqa: E402

SIZES = common.SIZES


def parse_arg(arg: str | None) -> tuple[str, str]:
  return common.parse_arg(arg, config="pretrain", variants=("demo", "fmow", "bigearthnet"), default="demo")


def get_config(arg: str | None = None):
  dataset, size = parse_arg(arg)
  c = common.base("pretrain")
  c.batch_size = 4096
  c.eval_batch_size = 256
  c.total_epochs = 200.0
  c.warmup_epochs = 20.0
  c.optimizer.update(dict(blr=2e-4, b2=0.95, min_lr=0.0, weight_decay=0.05, decay_pos_embed=True))
  c.eval_every = 5000
  c.image_every = 5000

  if dataset == "fmow":
    c.model = common.model_section(f"mae_vit_{SIZES[size]}_patch8_96", mask_ratio=0.90)
    c.data = common.data_section("fmow_sentinel", 96)
  elif dataset == "bigearthnet":
    c.model = common.model_section(f"mae_vit_{SIZES[size]}_patch8_128", mask_ratio=0.90)
    c.data = common.data_section("bigearthnet", 128)
    c.optimizer.blr = 1e-4
  else:   # demo: small model, real embedded scene, minutes on a laptop CPU
    c.model = common.model_section("mae_vit_tiny", mask_ratio=0.90, img_size=48, embed_dim=128, depth=4,
                                   num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)
    c.data = common.data_section("demo", 48)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.optimizer.blr = 8e-3          # lr 1e-3: a 1M-parameter model tolerates far more than ViT-B's 3.2e-3 / 4096
    common.cpu_demo(c, steps=1200, warmup=100, every=200)
    c.image_every = 200
  return c
