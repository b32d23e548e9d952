r"""SpectralGPT masked-autoencoder pretraining (Hong et al., IEEE TPAMI 2024), reference recipe §4.

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
  --config.batch_size=256 --config.optimizer.accum_steps=4     global batch, split into 4 micro-batches per step
  --config.mesh.fsdp=-1 --config.mesh.model=2                   FSDP over the remaining devices, 2-way tensor parallel
  --config.compute_dtype=float32                                matmuls in fp32 (params/optimizer/loss always fp32)
  --config.total_steps=1000                                     step budget instead of epochs
  --config.data.data_dir=/path/to/tensorflow_datasets           prepared TFDS data (see docs/data.md)
The learning rate is blr * batch_size / 256 unless --config.optimizer.lr is set.
"""
import ml_collections

SIZES = {"B": "base", "L": "large", "H": "huge"}


def parse_arg(arg: str | None) -> tuple[str, str]:
  parts = [p.strip() for p in (arg or "demo").split(",") if p.strip()]
  dataset = parts[0] if parts else "demo"
  size = "B"
  for part in parts[1:]:
    value = part.split("=", 1)[1] if "=" in part else part
    if value.upper() not in SIZES:
      raise ValueError(f"configs/pretrain.py:{arg}: model size {value!r} must be one of {sorted(SIZES)}")
    size = value.upper()
  if dataset not in ("demo", "fmow", "bigearthnet"):
    raise ValueError(f"configs/pretrain.py:{arg}: variant {dataset!r} must be demo, fmow or bigearthnet")
  return dataset, size


def model_section(name: str, mask_ratio: float, **overrides) -> ml_collections.ConfigDict:
  """The named MAE's full architecture as overridable keys (type-checked on the command line)."""
  from spectralgpt_jax import models   # configs are Python: the model registry is the single source of truth
  fields = {k: v for k, v in models.get_config(name, **overrides).to_dict().items() if k not in ("kind", "dtype")}
  return ml_collections.ConfigDict({"name": name, "mask_ratio": mask_ratio, **fields})


def data_section(name: str, image_size: int) -> ml_collections.ConfigDict:
  """The data layer's defaults for `name` (docs/contracts.md) at the model's image size."""
  from spectralgpt_jax.data import pipeline
  data = ml_collections.ConfigDict(dict(pipeline.default_data_config(name)))
  data.image_size = image_size
  return data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, size = parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.task = "pretrain"
  c.seed = 0

  # Schedule and batch (one step = one optimizer update on `batch_size` examples).
  c.batch_size = 4096
  c.eval_batch_size = 256
  c.total_steps = 0                 # > 0 overrides total_epochs
  c.total_epochs = 200.0
  c.warmup_steps = 0                # > 0 overrides warmup_epochs
  c.warmup_epochs = 20.0
  c.num_train_examples = 0          # 0: ask the data layer (needed for epoch-based schedules)

  c.optimizer = ml_collections.ConfigDict(dict(
      blr=2e-4, lr=0.0,             # lr = blr * batch_size / 256 unless lr > 0
      min_lr=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
      clip_grad_norm=0.0,           # the reference does not clip
      accum_steps=1))               # micro-batches per step (in-step scan); batch_size must divide by it
  c.compute_dtype = "bfloat16"      # matmul dtype; params, optimizer state and loss stay float32
  c.skip_nonfinite = False          # False: stop with the step number; True: skip such updates and continue

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))   # one axis may be -1 (= the rest)

  # Bookkeeping.
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.eval_every = 5000
  c.image_every = 5000
  c.num_preview = 4
  c.init_from = ""                  # stage 2: a stage-1 export dir or run dir
  c.export = True                   # DIR/export: params + metadata.json at the end
  c.progress_bar = True             # tqdm on a terminal, log lines otherwise
  c.tensorboard = True

  if dataset == "fmow":
    c.model = model_section(f"mae_vit_{SIZES[size]}_patch8_96", mask_ratio=0.90)
    c.data = data_section("fmow_sentinel", 96)
  elif dataset == "bigearthnet":
    c.model = model_section(f"mae_vit_{SIZES[size]}_patch8_128", mask_ratio=0.90)
    c.data = data_section("bigearthnet", 128)
    c.optimizer.blr = 1e-4
  else:   # demo: small model, real embedded scene, minutes on a laptop CPU
    c.model = model_section("mae_vit_tiny", mask_ratio=0.90, img_size=48, embed_dim=128, depth=4, num_heads=4,
                            decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)
    c.data = data_section("demo", 48)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.total_steps = 1200
    c.warmup_steps = 100
    c.optimizer.blr = 8e-3          # lr 1e-3: a 1M-parameter model tolerates far more than ViT-B's 3.2e-3 / 4096
    c.compute_dtype = "float32"     # CPUs have no fast bf16 matmuls
    c.log_every = 20
    c.checkpoint_every = 200
    c.eval_every = 200
    c.image_every = 200
  return c
