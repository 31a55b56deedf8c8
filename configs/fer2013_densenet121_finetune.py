"""ImageNet DenseNet-121 fine-tuned on FER2013: the published-recipe comparison.

  python train.py --config configs/fer2013_densenet121_finetune.py \
      --workdir runs/fer2013_d121 --config.manual_dir ~/Downloads/fer2013
  # offline: --config.init_from=keras:/path/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5
  # or       --config.init_from=torchvision:/path/densenet121-a639ec97.pth

Input size 224: the published DenseNet-121 result on FER2013 (73.16%
PrivateTest) fine-tunes at 224, and the ImageNet filters were learnt at that
scale. DenseNet-121 downsamples 32x, so 48px faces would reach the last block
as a 1x1 map; 224 gives 7x7. The cost is about 22x the pixels of 48px.

One input channel: FER is grayscale, and the stem's RGB kernels are summed
into one (`convert.adapt_input_channels`, automatic), which gives exactly the
logits of the RGB model on the gray image replicated to RGB, with a third of
the input to move. Everything is fine-tuned; the new 7-class head learns 10x
faster, and an EMA of the weights (horizon ~1,000 steps, about 2 epochs) is
the evaluated model. These choices follow common fine-tuning practice; they
have not been tuned on FER2013 here (no dataset or GPU on this project's
machines).
"""

import os

from densenet_flax.config_keys import load_config_file


def get_config():
  """configs/fer2013_densenet121.py (224px, SGD, cosine, 40 epochs), plus
  ImageNet weights, one input channel, a 10x head rate and an EMA."""
  config = load_config_file(
    os.path.join(os.path.dirname(__file__), 'fer2013_densenet121.py')
  )
  config.init_from = 'keras:DenseNet121'  # ImageNet; bn_epsilon follows Keras
  config.channels = 1  # stem adapted from RGB (see above)
  config.head_lr_multiplier = 10.0
  config.ema_decay = 0.999
  return config
