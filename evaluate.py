"""Evaluate a checkpoint: python evaluate.py --workdir DIR [--checkpoint best]
[--split NAME] [--tta ten_crop]. Writes DIR/eval/<split>-<step>.json and .png.
"""

from densenet_flax.evaluate import main

if __name__ == '__main__':
  main()
