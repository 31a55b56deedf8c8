"""TFDS builder for AffectNet-7: codes 0-6; contempt (7) is skipped.

See densenet_flax/datasets/affectnet_builder.py for the features, splits
and what is skipped.
"""

from densenet_flax.datasets import affectnet_builder


class Builder(affectnet_builder.AffectNetBuilder):
  """AffectNet with 7 classes (no contempt)."""

  NUM_CLASSES = 7
