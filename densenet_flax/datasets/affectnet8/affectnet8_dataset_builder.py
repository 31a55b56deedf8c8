"""TFDS builder for AffectNet-8: codes 0-7 (neutral ... contempt).

See densenet_flax/datasets/affectnet_builder.py for the features, splits
and what is skipped.
"""

from densenet_flax.datasets import affectnet_builder


class Builder(affectnet_builder.AffectNetBuilder):
  """AffectNet with 8 classes."""

  NUM_CLASSES = 8
