"""Predict with a trained run: python predict.py --workdir DIR PATH...
[--faces] [--every N] [--output out.jsonl|out.csv] [--annotate DIR].

PATHs are images, folders (searched recursively) and videos.
"""

from densenet_flax.predict import main

if __name__ == '__main__':
  main()
