"""How far bf16 compute moves the logits from float32, on random weights.

  python -m benchmarks.bf16_error

For each model (batch 8, random normal inputs, the same float32 variables):
max |logit_bf16 - logit_fp32| / max |logit_fp32|. Imports no TensorFlow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from densenet_flax import models

CASES = (
  ('densenet_bc_100_12', 32, 3, 10),
  ('fer_densenet', 48, 1, 7),
  ('densenet121', 64, 3, 1000),
)


def relative_error(
  name: str, size: int, channels: int, num_classes: int, batch: int = 8
) -> float:
  x = jax.random.normal(jax.random.key(1), (batch, size, size, channels))
  fp32 = models.create_model(name, num_classes=num_classes)
  bf16 = models.create_model(name, num_classes=num_classes, dtype=jnp.bfloat16)
  variables = fp32.init(jax.random.key(0), x, train=False)
  ref = fp32.apply(variables, x, train=False)
  out = bf16.apply(variables, x, train=False)
  return float(jnp.abs(out - ref).max() / jnp.abs(ref).max())


def main():
  for name, size, channels, num_classes in CASES:
    error = relative_error(name, size, channels, num_classes)
    print(
      f'{name} @{size}x{channels}: max |logit difference| / max |logit| '
      f'= {error:.2%}',
      flush=True,
    )


if __name__ == '__main__':
  main()
