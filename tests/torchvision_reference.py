"""torchvision's DenseNet, rebuilt from torch.nn with torchvision's layout.

Importing torchvision itself fails on this project's machines (its compiled
ops do not load against the local CPU torch wheel), so the parity tests use
this: the module tree and therefore every state-dict name
(features.conv0, features.denseblock1.denselayer1.norm1, ...,
features.norm5, classifier) and the forward pass follow torchvision's
models/densenet.py (v0.2x) exactly; only the weight init is left at torch's
defaults, since the tests randomise every weight anyway.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's configurations: (growth_rate, block_config, num_init_features)
ARCHITECTURES = {
  'densenet121': (32, (6, 12, 24, 16), 64),
  'densenet161': (48, (6, 12, 36, 24), 96),
  'densenet169': (32, (6, 12, 32, 32), 64),
  'densenet201': (32, (6, 12, 48, 32), 64),
}


class _DenseLayer(nn.Module):
  def __init__(self, num_input_features, growth_rate, bn_size):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(num_input_features)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(
      num_input_features, bn_size * growth_rate, 1, 1, bias=False
    )
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(
      bn_size * growth_rate, growth_rate, 3, 1, 1, bias=False
    )

  def forward(self, features):
    concated = torch.cat(features, 1)
    bottleneck = self.conv1(self.relu1(self.norm1(concated)))
    return self.conv2(self.relu2(self.norm2(bottleneck)))


class _DenseBlock(nn.ModuleDict):
  def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
    super().__init__()
    for i in range(num_layers):
      self.add_module(
        f'denselayer{i + 1}',
        _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size),
      )

  def forward(self, init_features):
    features = [init_features]
    for _, layer in self.items():
      features.append(layer(features))
    return torch.cat(features, 1)


class _Transition(nn.Sequential):
  def __init__(self, num_input_features, num_output_features):
    super().__init__()
    self.norm = nn.BatchNorm2d(num_input_features)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv2d(
      num_input_features, num_output_features, 1, 1, bias=False
    )
    self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
  def __init__(
    self,
    growth_rate=32,
    block_config=(6, 12, 24, 16),
    num_init_features=64,
    bn_size=4,
    num_classes=1000,
  ):
    super().__init__()
    self.features = nn.Sequential(
      OrderedDict(
        [
          ('conv0', nn.Conv2d(3, num_init_features, 7, 2, 3, bias=False)),
          ('norm0', nn.BatchNorm2d(num_init_features)),
          ('relu0', nn.ReLU(inplace=True)),
          ('pool0', nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
      )
    )
    num_features = num_init_features
    for i, num_layers in enumerate(block_config):
      self.features.add_module(
        f'denseblock{i + 1}',
        _DenseBlock(num_layers, num_features, bn_size, growth_rate),
      )
      num_features += num_layers * growth_rate
      if i != len(block_config) - 1:
        self.features.add_module(
          f'transition{i + 1}', _Transition(num_features, num_features // 2)
        )
        num_features //= 2
    self.features.add_module('norm5', nn.BatchNorm2d(num_features))
    self.classifier = nn.Linear(num_features, num_classes)

  def forward(self, x):
    out = F.relu(self.features(x), inplace=True)
    out = F.adaptive_avg_pool2d(out, (1, 1))
    return self.classifier(torch.flatten(out, 1))


def randomized(name: str, num_classes: int = 1000, seed: int = 0) -> DenseNet:
  """An eval-mode model with random weights and random BN statistics."""
  growth_rate, blocks, init = ARCHITECTURES[name]
  torch.manual_seed(seed)
  model = DenseNet(growth_rate, blocks, init, num_classes=num_classes)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  return model.eval()
