"""DenseNets (Huang et al. 2017, arXiv 1608.06993) as Flax Linen modules.

The modules read like the paper's figures: `DenseLayer` (H_l), `DenseBlock`,
`Transition` and the `DenseNet` that composes them. Parameter names follow
torchvision (conv0, norm0, denseblockN/denselayerM/{norm1,conv1,norm2,conv2},
transitionN/{norm,conv}, classifier), so weights map one-to-one and the code can
be read against torchvision's.

Every architectural choice is a field with a default; presets are dictionaries of
fields, created by name with `create_model`.

Shapes: images are NHWC, `x: [batch, height, width, channels]`; any channel
count works (1 for grayscale faces, 3 for RGB).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from densenet_flax import layers
from densenet_flax import shared_buffer

Array = Any
Dtype = Any
ModuleDef = Any

STEMS = ('imagenet', 'cifar', 'fer')


class DenseLayer(nn.Module):
  """One H_l: it sees the list of all earlier feature maps of its block.

  Bottleneck ("B") layer: BN-ReLU-Conv1x1(bn_size*k)-BN-ReLU-Conv3x3(k);
  basic layer (bn_size=None): BN-ReLU-Conv3x3(k). Dropout, when on, follows
  each conv, as in the paper.

  The layer takes the *list* of earlier maps rather than their concatenation,
  which is never built (see layers.normalize_relu). In memory-efficient
  training the block computes its layers itself (shared_buffer) from these
  modules' variables.
  """

  growth_rate: int
  bn_size: int | None
  drop_rate: float
  conv: ModuleDef
  norm: ModuleDef

  def setup(self):
    if self.bn_size is None:
      self.norm1 = self.norm()
      self.conv1 = self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)))
    else:
      self.norm1 = self.norm()
      self.conv1 = self.conv(self.bn_size * self.growth_rate, (1, 1))
      self.norm2 = self.norm()
      self.conv2 = self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)))
    self.dropout = layers.Dropout(self.drop_rate)

  def __call__(
    self,
    features: Sequence[Array],
    train: bool,
    moments: Sequence[tuple[Array, Array]] | None = None,
  ) -> Array:
    """features: list of [N, H, W, C_i] -> new features [N, H, W, growth_rate].

    moments: the batch statistics of each feature map in train mode, computed
    once by the block for all the layers that read that map.
    """
    x = self.norm1(
      tuple(features), use_running_average=not train, piece_moments=moments
    )
    x = self.conv1(x)
    if self.drop_rate > 0:
      x = self.dropout(x, deterministic=not train)
    if self.bn_size is None:
      return x
    x = self.norm2(x, use_running_average=not train)
    x = self.conv2(x)
    if self.drop_rate > 0:
      x = self.dropout(x, deterministic=not train)
    return x


class DenseBlock(nn.Module):
  """`num_layers` dense layers; layer l sees the concatenation [x_0, ..., x_{l-1}].

  Returns the feature maps whose concatenation is the block's output
  ([N, H, W, C_in + L * growth_rate]), and in train mode their batch
  statistics. The concatenation is never built: every consumer (the next
  layers, the transition) normalises the list, and each map's statistics
  are computed once here instead of once per reader.

  With `memory_efficient`, training runs the whole block as one
  `shared_buffer.dense_block`: the maps come back as a single buffer, and the
  backward pass recomputes each layer instead of keeping its intermediates,
  so the compiled program's memory grows linearly with depth. Params and
  statistics are the same variables either way.
  """

  num_layers: int
  growth_rate: int
  bn_size: int | None
  drop_rate: float
  memory_efficient: bool
  conv: ModuleDef
  norm: ModuleDef
  bn_axis_name: str | None = None
  segment_size: int = 8

  @nn.compact
  def __call__(self, x: Array, train: bool):
    dense_layers = [
      DenseLayer(
        growth_rate=self.growth_rate,
        bn_size=self.bn_size,
        drop_rate=self.drop_rate,
        conv=self.conv,
        norm=self.norm,
        name=f'denselayer{i + 1}',
      )
      for i in range(self.num_layers)
    ]
    if (
      train
      and self.memory_efficient
      and self.num_layers
      and not self.is_initializing()
    ):
      return self._shared_buffer(x, dense_layers)
    features = [x]
    stats = [layers.moments(x, self.bn_axis_name)] if train else None
    for layer in dense_layers:
      features.append(layer(features, train, stats))
      if train:
        stats.append(layers.moments(features[-1], self.bn_axis_name))
    return features, stats

  def _shared_buffer(self, x: Array, dense_layers: Sequence[DenseLayer]):
    """The train-mode block through shared_buffer.dense_block."""
    norm1 = dense_layers[0].norm1
    spec = shared_buffer.BlockSpec(
      num_layers=self.num_layers,
      growth_rate=self.growth_rate,
      bottleneck=self.bn_size is not None,
      drop_rate=self.drop_rate,
      epsilon=norm1.epsilon,
      dtype=norm1.dtype or x.dtype,
      axis_name=self.bn_axis_name,
      segment_size=self.segment_size,
    )
    params = shared_buffer.stack_params(
      spec, [layer.variables['params'] for layer in dense_layers], x.shape[-1]
    )
    key = self.make_rng('dropout') if self.drop_rate > 0 else None
    out = shared_buffer.dense_block(spec, params, x.astype(spec.dtype), key)
    for i, layer in enumerate(dense_layers):
      seen = x.shape[-1] + i * self.growth_rate
      layer.norm1.update_running_average(out.mean[:seen], out.var[:seen])
      if self.bn_size is not None:
        layer.norm2.update_running_average(out.mean2[i], out.var2[i])
    return [out.buffer], [(out.mean, out.var)]


class Transition(nn.Module):
  """BN-ReLU-Conv1x1(out_features)-AvgPool 2x2/2: halves height and width once."""

  out_features: int
  drop_rate: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(
    self,
    features: Sequence[Array],
    train: bool,
    moments: Sequence[tuple[Array, Array]] | None = None,
  ) -> Array:
    """features: a block's feature maps (and their moments, in train mode)."""
    x = self.norm(name='norm')(
      features, use_running_average=not train, piece_moments=moments
    )
    x = self.conv(self.out_features, (1, 1), name='conv')(x)
    if self.drop_rate > 0:
      x = layers.Dropout(self.drop_rate)(x, deterministic=not train)
    return layers.avg_pool_2x2(x)


def stage_names(num_blocks: int) -> tuple[str, ...]:
  """The stages of a DenseNet in input-to-output order, named as its params.

  'stem' holds conv0 (and norm0); 'norm_final' is the last BN; 'classifier'
  the dense head. Freezing and layer-wise learning rates work in these units.
  """
  names = ['stem']
  for i in range(1, num_blocks + 1):
    names.append(f'denseblock{i}')
    if i < num_blocks:
      names.append(f'transition{i}')
  return (*names, 'norm_final', 'classifier')


def stages_through(num_blocks: int, stage: str) -> tuple[str, ...]:
  """`stage` and the stages before it ('' = none)."""
  if not stage:
    return ()
  names = stage_names(num_blocks)
  return names[: names.index(stage) + 1]


def stage_of(param_name: str) -> str:
  """The stage of a top-level param/BN name ('conv0' and 'norm0' -> 'stem')."""
  return 'stem' if param_name in ('conv0', 'norm0') else param_name


def spatial_sizes(stem: str, num_transitions: int, size: int) -> list[int]:
  """Height (or width) after the stem and after each transition, for one input size.

  The formulas are those of the layers used below: explicit padding as
  torchvision/Keras, and VALID 2x2/2 average pools (floor).
  """
  if stem == 'imagenet':
    size = (size + 2 * 3 - 7) // 2 + 1  # conv 7x7/2, pad 3
    size = (size + 2 * 1 - 3) // 2 + 1  # max pool 3x3/2, pad 1
  elif stem == 'fer':
    size = size // 2  # conv 3x3/1 pad 1 keeps the size; max pool 2x2/2
  elif stem != 'cifar':
    raise ValueError(f'stem must be one of {STEMS}; got {stem!r}')
  sizes = [size]
  for _ in range(num_transitions):
    size = size // 2
    sizes.append(size)
  return sizes


def min_input_size(stem: str, num_transitions: int) -> int:
  """Smallest height/width for which every stage keeps at least a 1x1 map."""
  size = 1
  while min(spatial_sizes(stem, num_transitions, size)) < 1:
    size += 1
  return size


class DenseNet(nn.Module):
  """A DenseNet: stem, dense blocks joined by transitions, BN-ReLU-pool-dense head.

  Call it as `model.apply(variables, x, train=False)` with x [N, H, W, C];
  it returns float32 logits [N, num_classes]. With `train=True`, pass
  `mutable=['batch_stats']` and, when `drop_rate > 0`, a 'dropout' rng.

  Attributes:
    growth_rate: k, the channels each dense layer adds.
    block_sizes: dense layers per block, one entry per block; a transition
      joins each block to the next.
    num_init_features: channels of the stem conv.
    bn_size: bottleneck width factor (the 1x1 conv has bn_size*k channels);
      None for the basic layer without bottleneck.
    compression: theta; a transition keeps floor(theta * m) of m channels.
    drop_rate: dropout after each conv except the stem's (0 = off).
    stem: 'imagenet' (Conv7x7/2-BN-ReLU-MaxPool3x3/2), 'cifar' (Conv3x3), or
      'fer' (Conv3x3-BN-ReLU-MaxPool2x2/2).
    num_classes: width of the classifier.
    memory_efficient: train each dense block over one shared buffer whose
      backward pass recomputes the layers (shared_buffer): memory linear in
      depth; same outputs, gradients and statistics up to rounding.
    segment_size: memory-efficient training only: dense layers per compiled
      loop (shared_buffer.BlockSpec). Shorter loops pad fewer channels, and
      each is one more loop body to compile; 1 unrolls the block, which
      then compiles slower than in loops of 8
      (docs/benchmarks.md#the-unrolled-layers).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters and BN statistics
      stay in `param_dtype`, logits are returned as float32.
    param_dtype: dtype of parameters and BN statistics.
    bn_momentum: decay of the BN moving averages (0.9 = torchvision's 0.1).
    bn_epsilon: BN epsilon (1e-5 torchvision; 1.001e-5 Keras).
    bn_axis_name: a pmap/shard_map axis name over which BN batch statistics
      are averaged, so N devices x B examples == 1 device x N*B examples.
    frozen_bn_through: a stage name (`stage_names`): that stage and the ones
      before it stay in inference mode when training (BN normalises with, and
      keeps, its running statistics; no dropout), as when fine-tuning with
      frozen early stages. '' = none.
  """

  growth_rate: int = 32
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int | None = 4
  compression: float = 0.5
  drop_rate: float = 0.0
  stem: str = 'imagenet'
  num_classes: int = 1000
  memory_efficient: bool = False
  segment_size: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  frozen_bn_through: str = ''

  @property
  def min_input_size(self) -> int:
    return min_input_size(self.stem, len(self.block_sizes) - 1)

  def _check_input(self, x: Array) -> None:
    if x.ndim != 4:
      raise ValueError(
        f'DenseNet expects images shaped [batch, height, width, channels]; '
        f'got an array of shape {tuple(x.shape)}'
      )
    height, width = x.shape[1:3]
    need = self.min_input_size
    if min(height, width) < need:
      raise ValueError(
        f'Input {height}x{width} is too small for this DenseNet: the '
        f'{self.stem!r} stem and {len(self.block_sizes) - 1} transitions need '
        f'at least {need}x{need} pixels.'
      )

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """The logits of a batch of images.

    Args:
      x: images [N, H, W, C], C as at init (which takes any C), H and W at
        least `min_input_size`; cast to `dtype`.
      train: normalise with, and update, the batch statistics and apply
        dropout, except in the stages through `frozen_bn_through`.

    Returns:
      float32 logits [N, num_classes].

    Raises:
      ValueError: `x` is not 4-D or is smaller than `min_input_size`; or
        `frozen_bn_through` is not a stage name, `segment_size` is below 1, or
        `stem` is not one of STEMS.
    """
    self._check_input(x)
    conv = functools.partial(
      layers.Conv, dtype=self.dtype, param_dtype=self.param_dtype
    )
    # Every BN of a DenseNet is followed by a ReLU: one fused layer.
    norm = functools.partial(
      layers.BatchNormReLU,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.bn_axis_name,
    )

    stages = stage_names(len(self.block_sizes))
    if self.frozen_bn_through and self.frozen_bn_through not in stages:
      raise ValueError(
        f'frozen_bn_through={self.frozen_bn_through!r}: expected '
        f'one of {", ".join(stages[:-1])}'
      )
    if self.segment_size < 1:
      raise ValueError(
        f'segment_size={self.segment_size}: expected at least '
        f'1 dense layer per loop'
      )
    frozen = stages_through(len(self.block_sizes), self.frozen_bn_through)
    trains = lambda stage: train and stage not in frozen  # noqa: E731

    x = jnp.asarray(x, self.dtype)
    x = self._stem(x, trains('stem'), conv, norm)

    num_features = self.num_init_features
    for i, num_layers in enumerate(self.block_sizes):
      features, stats = DenseBlock(
        num_layers=num_layers,
        growth_rate=self.growth_rate,
        bn_size=self.bn_size,
        drop_rate=self.drop_rate,
        memory_efficient=self.memory_efficient,
        segment_size=self.segment_size,
        conv=conv,
        norm=norm,
        bn_axis_name=self.bn_axis_name,
        name=f'denseblock{i + 1}',
      )(x, trains(f'denseblock{i + 1}'))
      num_features += num_layers * self.growth_rate
      if i != len(self.block_sizes) - 1:
        num_features = int(math.floor(self.compression * num_features))
        x = Transition(
          out_features=num_features,
          drop_rate=self.drop_rate,
          conv=conv,
          norm=norm,
          name=f'transition{i + 1}',
        )(features, trains(f'transition{i + 1}'), stats)

    final_trains = trains('norm_final')
    x = norm(name='norm_final')(
      features,
      use_running_average=not final_trains,
      piece_moments=stats if final_trains else None,
    )
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='classifier',
    )(x)
    return jnp.asarray(x, jnp.float32)

  def _stem(
    self, x: Array, train: bool, conv: ModuleDef, norm: ModuleDef
  ) -> Array:
    if self.stem == 'imagenet':
      # Explicit symmetric padding as torchvision/Keras ('SAME' pads
      # asymmetrically at even sizes and would shift imported weights).
      x = conv(
        self.num_init_features,
        (7, 7),
        strides=(2, 2),
        padding=((3, 3), (3, 3)),
        name='conv0',
      )(x)
      x = norm(name='norm0')(x, use_running_average=not train)
      return layers.max_pool_3x3_s2(x)
    if self.stem == 'cifar':
      # The first dense layer's BN-ReLU follows directly, as in the paper.
      return conv(
        self.num_init_features, (3, 3), padding=((1, 1), (1, 1)), name='conv0'
      )(x)
    if self.stem == 'fer':
      x = conv(
        self.num_init_features, (3, 3), padding=((1, 1), (1, 1)), name='conv0'
      )(x)
      x = norm(name='norm0')(x, use_running_average=not train)
      return layers.max_pool_2x2(x)
    raise ValueError(f'stem must be one of {STEMS}; got {self.stem!r}')


# ---------------------------------------------------------------------------
# Presets: each is the set of DenseNet fields that defines the architecture.


def _imagenet(block_sizes, growth_rate=32, num_init_features=64):
  return dict(
    growth_rate=growth_rate,
    block_sizes=block_sizes,
    num_init_features=num_init_features,
    bn_size=4,
    compression=0.5,
    stem='imagenet',
  )


def _cifar(depth, growth_rate, bc):
  """The paper's CIFAR nets: 3 blocks of (depth-4)/3 layers, halved for BC."""
  layers = (depth - 4) // 3
  if bc:
    layers //= 2
  return dict(
    growth_rate=growth_rate,
    block_sizes=(layers,) * 3,
    num_init_features=2 * growth_rate if bc else 16,
    bn_size=4 if bc else None,
    compression=0.5 if bc else 1.0,
    stem='cifar',
  )


PRESETS: dict[str, dict[str, Any]] = {
  'densenet121': _imagenet((6, 12, 24, 16)),
  'densenet161': _imagenet(
    (6, 12, 36, 24), growth_rate=48, num_init_features=96
  ),
  'densenet169': _imagenet((6, 12, 32, 32)),
  'densenet201': _imagenet((6, 12, 48, 32)),
  'densenet264': _imagenet((6, 12, 64, 48)),
  'densenet_40_12': _cifar(40, 12, bc=False),
  'densenet_100_12': _cifar(100, 12, bc=False),
  'densenet_100_24': _cifar(100, 24, bc=False),
  'densenet_bc_100_12': _cifar(100, 12, bc=True),
  'densenet_bc_250_24': _cifar(250, 24, bc=True),
  'densenet_bc_190_40': _cifar(190, 40, bc=True),
  # 48x48 grayscale faces. The FER2013 sketch this follows downsampled twice
  # per transition (a stride-2 conv and a pool); here a transition pools once,
  # so the maps go 48 -> 24 (stem) -> 12 -> 6 -> 3.
  'fer_densenet': dict(
    growth_rate=12,
    block_sizes=(6, 12, 24, 16),
    num_init_features=24,
    bn_size=4,
    compression=0.5,
    drop_rate=0.2,
    stem='fer',
  ),
}

MODEL_FIELDS = tuple(
  f for f in DenseNet.__dataclass_fields__ if f not in ('parent', 'name')
)


def create_model(name: str, *, num_classes: int, **overrides: Any) -> DenseNet:
  """Returns the preset `name` with `num_classes` outputs.

  Overrides are DenseNet fields, e.g.
  `create_model('densenet_bc_100_12', num_classes=10, block_sizes=(40, 40, 40))`
  for a deeper BC net, or `dtype=jnp.bfloat16, memory_efficient=True`.

  Args:
    name: a key of `PRESETS`, e.g. 'densenet121', 'densenet_bc_100_12' or
      'fer_densenet'.
    num_classes: width of the classifier; presets fix none (the preset
      functions, e.g. `densenet121`, default it by stem, this does not).
    **overrides: DenseNet fields that replace the preset's values; a
      `block_sizes` list is made a tuple.

  Returns:
    An unbound DenseNet; `model.init` creates its variables.

  Raises:
    ValueError: `name` is not a preset, an override is not a DenseNet field,
      or the resulting `stem` is not one of STEMS.
  """
  if name not in PRESETS:
    raise ValueError(
      f'Unknown model {name!r}; available: {", ".join(sorted(PRESETS))}'
    )
  unknown = sorted(set(overrides) - set(MODEL_FIELDS))
  if unknown:
    raise ValueError(
      f'Unknown DenseNet field(s) {unknown} for model {name!r}; valid fields: '
      f'{", ".join(MODEL_FIELDS)}'
    )
  fields = {**PRESETS[name], **overrides, 'num_classes': num_classes}
  if fields['stem'] not in STEMS:
    raise ValueError(f'stem must be one of {STEMS}; got {fields["stem"]!r}')
  if 'block_sizes' in fields:
    fields['block_sizes'] = tuple(fields['block_sizes'])
  return DenseNet(**fields)


# The dataset each stem was designed for decides a preset function's default
# class count (ImageNet 1000, CIFAR-10, FER2013's 7 emotions).
_DEFAULT_NUM_CLASSES = {'imagenet': 1000, 'cifar': 10, 'fer': 7}


def _preset_fn(name: str) -> Callable[..., DenseNet]:
  default_classes = _DEFAULT_NUM_CLASSES[PRESETS[name]['stem']]

  def fn(*, num_classes: int = default_classes, **overrides: Any) -> DenseNet:
    return create_model(name, num_classes=num_classes, **overrides)

  fn.__name__ = fn.__qualname__ = name
  fn.__doc__ = (
    f'The {name!r} preset ({default_classes} classes unless '
    f'given); overrides are DenseNet fields.'
  )
  return fn


densenet121 = _preset_fn('densenet121')
densenet161 = _preset_fn('densenet161')
densenet169 = _preset_fn('densenet169')
densenet201 = _preset_fn('densenet201')
densenet264 = _preset_fn('densenet264')
densenet_40_12 = _preset_fn('densenet_40_12')
densenet_100_12 = _preset_fn('densenet_100_12')
densenet_100_24 = _preset_fn('densenet_100_24')
densenet_bc_100_12 = _preset_fn('densenet_bc_100_12')
densenet_bc_250_24 = _preset_fn('densenet_bc_250_24')
densenet_bc_190_40 = _preset_fn('densenet_bc_190_40')
fer_densenet = _preset_fn('fer_densenet')
