"""The steps lower for CUDA and TPU, with the kernels those platforms run.

`jax.export` lowers a jitted function for platforms this machine does not
have; the CPU backend stays the default meanwhile, so the generic kernels
(layers.use_kernels) must be asked for. Any primitive, dtype or custom VJP
without a CUDA or TPU lowering fails here. Tiny models: lowering is quick.
"""

import functools
import re

import jax
import jax.numpy as jnp
import optax
import pytest

from densenet_flax import layers
from densenet_flax import models
from densenet_flax import steps

PLATFORMS = ('cuda', 'tpu')
BATCH = {
  'image': jax.ShapeDtypeStruct((4, 12, 12, 1), jnp.float32),
  'label': jax.ShapeDtypeStruct((4,), jnp.int32),
}


def abstract_state(mode: str, dtype, dynamic_scale: bool = False):
  """A two-block DenseNet-BC with dropout, as shapes only."""
  model = models.create_model(
    'densenet_bc_100_12',
    num_classes=4,
    block_sizes=(2, 2),
    growth_rate=4,
    drop_rate=0.2,
    memory_efficient=mode == 'memory_efficient',
    dtype=dtype,
  )
  return jax.eval_shape(
    functools.partial(
      steps.create_train_state,
      jax.random.key(0),
      model,
      optax.sgd(0.1, momentum=0.9, nesterov=True),
      BATCH['image'].shape[1:],
      use_dynamic_scale=dynamic_scale,
    )
  )


def export_train_step(state, platforms):
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  step = jax.jit(
    functools.partial(steps.train_step, spec=steps.TrainSpec(num_classes=4))
  )
  return jax.export.export(step, platforms=platforms)(state, BATCH, key)


def functions(exported) -> set[str]:
  return set(
    re.findall(
      r'func\.func (?:private |public )?@([\w.]+)', exported.mlir_module()
    )
  )


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('mode', ['plain', 'memory_efficient'])
def test_train_and_eval_steps_lower_for_cuda_and_tpu(mode, dtype):
  state = abstract_state(mode, dtype)
  with layers.use_kernels('generic'):
    train = export_train_step(state, PLATFORMS)
    evaluate = jax.export.export(jax.jit(steps.eval_step), platforms=PLATFORMS)(
      state, BATCH
    )
  assert train.platforms == evaluate.platforms == PLATFORMS
  # Dropout drew jax.random's masks, not the CPU kernels' inline hash.
  names = functions(train)
  assert any(n.startswith('_bernoulli') for n in names), sorted(names)
  assert not any('threefry_bernoulli' in n for n in names)
  loops = train.mlir_module().count('stablehlo.while')
  # Memory-efficient blocks: one loop forward and one backward each.
  assert loops == (4 if mode == 'memory_efficient' else 0)
  outputs = jax.tree_util.tree_leaves(evaluate.out_avals)
  assert [a.shape for a in outputs] == [(4,), (4,)]  # prediction, loss


def test_float16_train_step_with_dynamic_loss_scaling_lowers_for_cuda():
  state = abstract_state('plain', jnp.float16, dynamic_scale=True)
  with layers.use_kernels('generic'):
    exported = export_train_step(state, ('cuda',))
  new_state, metrics = jax.tree_util.tree_unflatten(
    exported.out_tree, exported.out_avals
  )
  assert new_state.dynamic_scale.scale.dtype == jnp.float32
  assert {'grads_finite', 'loss_scale'} <= set(metrics)
  assert 'f16' in exported.mlir_module()


def test_without_the_switch_an_export_traces_the_cpu_kernels():
  """The reason for the switch: during an export the backend is the CPU, so
  'auto' lowers the CPU-tuned pieces for a GPU."""
  assert layers.kernel_choice() == 'auto'
  names = functions(
    export_train_step(abstract_state('plain', jnp.float32), ('cuda',))
  )
  assert any('threefry_bernoulli' in n for n in names)
