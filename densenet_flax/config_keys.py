"""Every config key of a run, with its default, and the choices of each.

Config files in configs/ start from `base_config()` and override a few keys;
every key can also be overridden on the command line, e.g.
`--config.num_epochs=3`. config_checks.validate checks a config against the
models, datasets and weight sources before any data is read or anything
compiled, and names the offending key; densenet_flax/recipe.py says what a
config means (the model, shapes, dtypes). This module imports nothing from
the package, so config files and every module may import it.
"""

from __future__ import annotations

import ml_collections


OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('piecewise', 'cosine', 'exponential', 'constant')
WEIGHT_DECAY_MODES = ('l2', 'decoupled')
CLASS_WEIGHTINGS = ('none', 'balanced')
CROPS = ('none', 'pad', 'random', 'resized')
HALF_DTYPES = ('bfloat16', 'float16')
# 'auto': dynamic loss scaling for float16 on GPU; 'dynamic': on any backend
# and dtype; 'none': never.
LOSS_SCALINGS = ('auto', 'dynamic', 'none')
TTAS = ('', 'ten_crop')
# jax.random implementations of the run's keys (dropout, mixup, init).
RNG_IMPLS = ('threefry2x32', 'rbg', 'unsafe_rbg')
SELECT_METRICS = ('accuracy', 'macro_f1', 'balanced_accuracy')
# How the checkpoint that test_split reports on is chosen: 'validation' (the
# best by eval_split, never the test split), 'test' (the best by test_split
# itself: the FER papers' protocol, which flatters the figure; reports say
# so) or 'last' (no choice: the last state, as the DenseNet paper reports).
SELECT_ON = ('validation', 'test', 'last')
# Training draws: 'none' (each example once per epoch) or 'balanced' (with
# replacement, weights 1/class count: data/order.py).
CLASS_SAMPLINGS = ('none', 'balanced')
# How a step is compiled over several devices (parallel.DataParallel): both
# compute the same bits, and checkpoints of one resume under the other.
PARALLELISMS = ('shard_map', 'pmap')
# FER+ training targets (fer_sources.ferplus_target), the one list of them:
# majority, probability, crossentropy, multi_target.
LABEL_MODES = ('majority', 'probability', 'crossentropy', 'multi_target')
# Datasets whose builder stores the crowd votes the other modes need.
VOTE_DATASETS = ('ferplus',)
# How train.py keeps a second run out of a workdir (run_lock.py).
WORKDIR_LOCKS = ('auto', 'flock', 'heartbeat', 'none')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # Model: a preset of densenet_flax.models and overrides of its fields.
  c.model = 'densenet_bc_100_12'
  c.model_overrides = ml_collections.ConfigDict()
  c.memory_efficient = False
  c.half_precision = False  # compute in half precision, params float32
  c.half_precision_dtype = 'bfloat16'  # or 'float16'
  # auto (dynamic for float16 on GPU) | dynamic (any backend, any dtype) | none
  c.loss_scaling = 'auto'
  # First weights of a fresh run (densenet_flax/pretrained.py): '' (random),
  # 'keras:DenseNet121' (downloads) or 'keras:/path/weights.h5',
  # 'torchvision:/path/densenet121.pth', 'workdir:/path/run[:best|latest|STEP]'.
  c.init_from = ''
  c.init_from_keras = ''  # deprecated: init_from='keras:NAME'

  # Fine-tuning (models.stage_names: stem, denseblock1, transition1, ...,
  # norm_final, classifier).
  # A stage: it and those before it are not updated ('' = train everything).
  c.freeze = ''
  # Frozen stages also keep their BN statistics (inference-mode BN).
  c.freeze_batch_stats = False
  c.head_lr_multiplier = 1.0  # the classifier's learning rate factor
  # Stage s below the classifier learns at lr * decay**s (1.0 = off).
  c.layer_lr_decay = 1.0
  # >0: keep an EMA of the weights; it is evaluated, selects 'best', and is
  # what evaluation and inference load.
  c.ema_decay = 0.0

  # Data (densenet_flax.data.specs.DATASETS).
  c.dataset = 'digits'
  c.data_dir = ''  # TFDS data dir; '' = TFDS default
  # Manual downloads (FER2013, FER+, RAF-DB, AffectNet); image_folder: the
  # root of its class folders.
  c.manual_dir = ''
  # image_folder's class names, in id order; a run fills them in from its
  # root (config.json keeps them for inference). Other datasets: empty.
  c.class_names = ()
  # Missing or unreadable images listed by a dataset's files are skipped
  # (counted, logged, and written into the run's report) instead of refused.
  c.skip_unreadable_images = False
  c.train_split = 'train'
  # Evaluated every epoch; selects 'best' (select_on='validation').
  # 'validation' where a dataset stores none is carved from train_split:
  # seeded, stratified, disjoint (validation_fraction of each class).
  c.eval_split = 'test'
  c.validation_fraction = 0.1
  c.test_split = ''  # evaluated once at the end, on 'best' ('' = none)
  c.test_tta = ''  # '' or 'ten_crop' for the test split
  # The checkpoint test_split reports on: 'validation' (the best by
  # eval_split, which may not be test_split), 'test' (the best by test_split,
  # as the FER papers do; reports say so) or 'last' (the last state).
  c.select_on = 'validation'
  c.image_size = 32  # model input height = width
  c.channels = 1  # model input channels (3: gray -> RGB)
  c.augment = ml_collections.ConfigDict(
    dict(
      resize=0,  # resize stored images to this first (0 = keep)
      crop='pad',  # none | pad (CIFAR) | random (FER) | resized (ImageNet)
      crop_padding=4,  # for crop='pad'
      flip=True,  # random horizontal flip
      rotation=0.0,  # max degrees of random rotation
      # The share of images that get the crop and the rotation (the rest are
      # only resized to image_size); 1.0 = all.
      geometric_probability=1.0,
      # RandAugment (torchvision's): ops per image (0 = off) and magnitude.
      rand_augment_ops=0,
      rand_augment_magnitude=9,
      # RandomErasing after normalisation: probability (0 = off) and the
      # erased area's range as fractions of the image.
      erasing=0.0,
      erasing_scale=(0.02, 0.33),
    )
  )
  c.shuffle_buffer = 16384  # file-based datasets only (ImageNet)

  # Optimisation.
  c.batch_size = 64  # global, over all devices and hosts
  c.eval_batch_size = 256
  c.num_epochs = 300
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.lr_batch_reference = 0  # >0: lr *= batch_size / lr_batch_reference
  c.schedule = 'piecewise'
  c.lr_boundaries = (0.5, 0.75)  # piecewise: fractions of training
  c.lr_decay = 0.1  # piecewise: factor at each boundary; exponential: per epoch
  c.warmup_epochs = 0.0
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 1e-4
  c.weight_decay_mode = 'l2'  # l2 (the paper's) | decoupled (AdamW style)
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.0
  c.class_weighting = 'none'  # none | balanced (inverse class frequency)
  # none | balanced: draws with weights 1/class count, with replacement
  # (datasets held in memory or read by index).
  c.class_sampling = 'none'
  # FER+ training targets (Barsoum et al. 2016): majority | probability (a
  # label drawn from the votes each step) | crossentropy (the vote
  # distribution) | multi_target; evaluation is majority.
  c.label_mode = 'majority'
  c.grad_clip_norm = 0.0  # 0 = off

  # Bookkeeping.
  c.seed = 0
  # The keys' PRNG: 'threefry2x32' (JAX's default) or 'rbg' / 'unsafe_rbg',
  # XLA's RngBitGenerator: other random streams. rbg compiles sooner on CPU
  # but steps slower (docs/benchmarks.md#random-keys-threefry2x32-or-rbg,
  # python -m benchmarks.compile_time).
  c.rng_impl = 'threefry2x32'
  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2  # the last K, plus the best
  c.select_metric = 'accuracy'  # on eval_split, for the 'best' checkpoint
  c.progress_bar = True
  # Many processes (hosts): jax.distributed.initialize(). Left empty, the
  # address, process count and id are auto-detected on SLURM, Open MPI,
  # Kubernetes and Cloud TPU (or read from JAX_COORDINATOR_ADDRESS).
  c.distributed = False
  c.coordinator_address = ''  # 'host:port' of process 0
  c.num_processes = 0  # 0 = auto-detect
  c.process_id = -1  # -1 = auto-detect
  c.distributed_timeout_s = 100  # how long to wait for a dead peer
  # Over several devices: 'shard_map' (jax.jit over jax.shard_map, global
  # arrays) or 'pmap' (host-local arrays); the same bits.
  c.parallelism = 'shard_map'
  # One training run per workdir (densenet_flax/run_lock.py): auto (flock,
  # else a heartbeat file) | flock | heartbeat (for network file systems
  # whose flock only locks against the same client) | none.
  c.workdir_lock = 'auto'
  # >0: a second run on a workdir in use waits up to this many seconds for
  # it to end, instead of exiting at once with code 75 (requeued jobs).
  c.wait_for_lock_s = 0
  # A heartbeat lock file not refreshed for this long is a dead run's.
  c.workdir_lock_stale_s = 120
  # Resume although keys that change the result differ (recorded in
  # metrics.jsonl).
  c.allow_config_change = False
  # Start from step 0 even where the workdir has checkpoints (they and the
  # history move aside, kept); a rerun resumes the restarted run.
  c.restart = False
  # >0: save and stop after this many steps of this invocation (time-boxed
  # jobs).
  c.stop_after_steps = 0
  # XLA's compiled steps, kept across runs: a resumed or repeated run skips
  # the compile (docs/benchmarks.md#compile-time). '' = off.
  c.compilation_cache_dir = '~/.cache/densenet_flax/xla'
  return c


def selection_split(config) -> str:
  """The split evaluated every epoch, whose metric picks 'best' (with
  select_on='last', 'best' is kept for inference but reports no test)."""
  if config.get('select_on', 'validation') == 'test':
    return config.test_split
  return config.eval_split


def with_defaults(recorded) -> ml_collections.ConfigDict:
  """A config as recorded (a dict or ConfigDict, e.g. from config.json), with
  every key added to the project since then set to its default."""
  config = ml_collections.ConfigDict(
    recorded.to_dict()
    if isinstance(recorded, ml_collections.ConfigDict)
    else recorded
  )
  _fill_missing(config, base_config())
  return config


def _fill_missing(config, defaults) -> None:
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif (
      isinstance(value, ml_collections.ConfigDict) and key != 'model_overrides'
    ):
      _fill_missing(config[key], value)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, loaded by path (as --config does)."""
  import importlib.util
  import os

  name = 'config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'No config file at {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
