"""The FLOPs of a DenseNet's convolutions, counted from its architecture.

An independent count to hold a compiler's cost analysis against
(benchmarks.tpu_compile): the shapes follow from the paper's formulas and
the model's fields, not from a traced program. A multiply-add is 2 FLOPs,
counted over every kernel tap as FLOP counts of CNNs usually are, or (with
`padding_taps=False`) only over the taps that read the input rather than
the padding, as XLA counts a convolution. The classifier counts as a 1x1
convolution on the pooled features.

Training a layer costs its forward product, the gradient of its input and
the gradient of its kernel, each as many FLOPs as the forward one; the stem
has no input gradient (nothing upstream of the image is trained). The
memory-efficient blocks (densenet_flax/shared_buffer.py) differ in two ways:
every layer of a loop reads the buffer up to the input width of the loop's
last layer (its BN and 1x1 conv meet zero-padded channels), and the backward
pass recomputes each bottleneck's 1x1 convolution, whose output the rest of
the layer's gradient needs (a 3x3's recomputed output would be unused: XLA
drops it).

Imports no TensorFlow, and nothing that traces.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Conv(NamedTuple):
  """One convolution (or the classifier) of a forward pass, per example."""

  name: str
  in_size: int  # input height = width
  kernel: int  # kernel height = width
  stride: int
  padding: int  # on every side
  in_channels: int
  out_channels: int
  # Memory-efficient training only: the channels the layer's loop reads
  # (>= in_channels), and whether its backward pass recomputes it.
  read_channels: int
  recomputed: bool = False

  @property
  def out_size(self) -> int:
    return (self.in_size + 2 * self.padding - self.kernel) // self.stride + 1

  def taps(self, padding_taps: bool = True) -> int:
    """(output position, kernel tap) pairs along one axis: all of them, or
    those that read the input rather than the padding."""
    if padding_taps:
      return self.out_size * self.kernel
    return sum(
      0 <= o * self.stride - self.padding + k < self.in_size
      for o in range(self.out_size)
      for k in range(self.kernel)
    )

  def flops(
    self, read_channels: bool = False, padding_taps: bool = True
  ) -> int:
    """Forward FLOPs per example; `read_channels`: over the channels its
    memory-efficient loop reads, not only its own input's."""
    channels = self.read_channels if read_channels else self.in_channels
    taps = self.taps(padding_taps)
    return 2 * taps**2 * channels * self.out_channels


def _stem(model, size: int, channels: int) -> tuple[list[Conv], int]:
  """(stem convs, map size after the stem)."""
  f0 = model.num_init_features
  if model.stem == 'imagenet':
    conv = Conv('conv0', size, 7, 2, 3, channels, f0, channels)
    return [conv], (conv.out_size + 2 * 1 - 3) // 2 + 1  # max pool 3x3/2
  conv = Conv('conv0', size, 3, 1, 1, channels, f0, channels)
  if model.stem == 'fer':
    return [conv], size // 2  # max pool 2x2/2
  if model.stem == 'cifar':
    return [conv], size
  raise ValueError(f'unknown stem {model.stem!r}')


def forward_convs(model, image_shape: tuple[int, int, int]) -> list[Conv]:
  """The convolutions of one example's forward pass, input to output.

  model: a models.DenseNet (its fields are read, nothing is traced);
  image_shape: (height, width, channels) with height == width.
  """
  height, width, channels = image_shape
  if height != width:
    raise ValueError(f'square images only; got {height}x{width}')
  convs, size = _stem(model, height, channels)
  features = model.num_init_features
  k = model.growth_rate
  for b, num_layers in enumerate(model.block_sizes):
    segment = model.segment_size
    for i in range(num_layers):
      seen = features + i * k
      # The loop of layer i ends at layer `end - 1`, whose input width every
      # layer of the loop reads.
      end = min((i // segment + 1) * segment, num_layers)
      read = features + (end - 1) * k
      name = f'denseblock{b + 1}/denselayer{i + 1}'
      if model.bn_size is None:
        convs.append(Conv(f'{name}/conv1', size, 3, 1, 1, seen, k, read))
      else:
        wide = model.bn_size * k
        convs.append(
          Conv(f'{name}/conv1', size, 1, 1, 0, seen, wide, read, True)
        )
        convs.append(Conv(f'{name}/conv2', size, 3, 1, 1, wide, k, wide))
    features += num_layers * k
    if b != len(model.block_sizes) - 1:
      out = int(math.floor(model.compression * features))
      name = f'transition{b + 1}/conv'
      convs.append(Conv(name, size, 1, 1, 0, features, out, features))
      features, size = out, size // 2
  convs.append(
    Conv('classifier', 1, 1, 1, 0, features, model.num_classes, features)
  )
  return convs


def train_step_flops(
  model,
  image_shape: tuple[int, int, int],
  batch: int,
  loop_bodies_once: bool = False,
  padding_taps: bool = True,
) -> int:
  """The convolution FLOPs of one train step on `batch` examples.

  Forward, input gradient and kernel gradient of every convolution (no
  input gradient for the stem); for `model.memory_efficient`, the block
  layers over the channels their loops read, plus the recomputed 1x1 of
  each bottleneck layer (see the module's docstring).

  `loop_bodies_once`: count each memory-efficient loop's layers as one,
  as XLA's cost analysis does (it counts a while loop's body once, whatever
  its trip count): what `compiled.cost_analysis()['flops']` should match.
  `padding_taps=False`: only the multiply-adds that read the input.
  """
  total = 0
  for conv in forward_convs(model, image_shape):
    in_block = conv.name.startswith('denseblock')
    padded = model.memory_efficient and in_block
    if padded and loop_bodies_once and not _first_of_loop(model, conv.name):
      continue
    passes = 2 if conv.name == 'conv0' else 3
    if padded and conv.recomputed:
      passes += 1
    total += passes * conv.flops(padded, padding_taps)
  return batch * total


def _first_of_loop(model, name: str) -> bool:
  """Whether the layer of `name` (denseblockB/denselayerL/...) starts one of
  its block's loops of `model.segment_size` layers."""
  layer = int(name.split('/')[1][len('denselayer') :])
  return (layer - 1) % model.segment_size == 0
