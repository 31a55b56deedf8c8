"""A PyTorch eager DenseNet for the benchmarks, written after torchvision's.

torchvision's densenet.py with the stem made configurable (ImageNet 7x7/2 +
max pool, CIFAR 3x3, or the 48 px FER stem), so every benchmark shape has a
like-for-like PyTorch peer. Not imported by the package; needs `torch`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint as torch_checkpoint


class DenseLayer(nn.Module):
  def __init__(
    self, num_input_features, growth_rate, bn_size, memory_efficient=False
  ):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(num_input_features)
    self.conv1 = nn.Conv2d(
      num_input_features, bn_size * growth_rate, 1, bias=False
    )
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.conv2 = nn.Conv2d(
      bn_size * growth_rate, growth_rate, 3, padding=1, bias=False
    )
    self.memory_efficient = memory_efficient

  def bottleneck(self, *inputs):
    return self.conv1(F.relu(self.norm1(torch.cat(inputs, 1))))

  def forward(self, features):
    if self.memory_efficient and any(f.requires_grad for f in features):
      out = torch_checkpoint.checkpoint(
        self.bottleneck, *features, use_reentrant=False
      )
    else:
      out = self.bottleneck(*features)
    return self.conv2(F.relu(self.norm2(out)))


class DenseBlock(nn.ModuleDict):
  def __init__(
    self,
    num_layers,
    num_input_features,
    growth_rate,
    bn_size,
    memory_efficient=False,
  ):
    super().__init__()
    for i in range(num_layers):
      self[f'denselayer{i + 1}'] = DenseLayer(
        num_input_features + i * growth_rate,
        growth_rate,
        bn_size,
        memory_efficient,
      )

  def forward(self, x):
    features = [x]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


class Transition(nn.Sequential):
  def __init__(self, num_input_features, num_output_features):
    super().__init__(
      nn.BatchNorm2d(num_input_features),
      nn.ReLU(),
      nn.Conv2d(num_input_features, num_output_features, 1, bias=False),
      nn.AvgPool2d(2, 2),
    )


class DenseNet(nn.Module):
  def __init__(
    self,
    growth_rate=32,
    block_config=(6, 12, 24, 16),
    num_init_features=64,
    bn_size=4,
    compression=0.5,
    num_classes=1000,
    in_channels=3,
    stem='imagenet',
    memory_efficient=False,
  ):
    super().__init__()
    if stem == 'imagenet':
      layers = [
        nn.Conv2d(in_channels, num_init_features, 7, 2, 3, bias=False),
        nn.BatchNorm2d(num_init_features),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
      ]
    elif stem == 'fer':
      layers = [
        nn.Conv2d(in_channels, num_init_features, 3, 1, 1, bias=False),
        nn.BatchNorm2d(num_init_features),
        nn.ReLU(),
        nn.MaxPool2d(2),
      ]
    else:
      layers = [nn.Conv2d(in_channels, num_init_features, 3, 1, 1, bias=False)]
    features = num_init_features
    for i, n in enumerate(block_config):
      layers.append(
        DenseBlock(n, features, growth_rate, bn_size, memory_efficient)
      )
      features += n * growth_rate
      if i != len(block_config) - 1:
        out = int(features * compression)
        layers.append(Transition(features, out))
        features = out
    layers += [nn.BatchNorm2d(features), nn.ReLU()]
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(features, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)

  def forward(self, x):
    x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
    return self.classifier(x)


def from_fields(
  fields: dict,
  num_classes: int,
  in_channels: int,
  memory_efficient: bool = False,
) -> DenseNet:
  """The peer of a densenet_flax preset (its fields dict)."""
  return DenseNet(
    growth_rate=fields['growth_rate'],
    block_config=tuple(fields['block_sizes']),
    num_init_features=fields['num_init_features'],
    bn_size=fields['bn_size'],
    compression=fields['compression'],
    num_classes=num_classes,
    in_channels=in_channels,
    stem=fields['stem'],
    memory_efficient=memory_efficient,
  )
