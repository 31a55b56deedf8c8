"""One framework's train step, driven over stdin/stdout by benchmarks.train_step.

  python -m benchmarks.step_worker {ours,keras-tf,keras-jax,torch}

Each line in is a JSON command, each line out a JSON reply:
  {"op": "setup", "model": ..., "size": ..., "channels": ..., "batch": ...,
   "num_classes": ..., "dtype": "float32"|"bfloat16", "memory_efficient": ...}
  {"op": "time", "steps": N}  -> {"times": [seconds per step, ...]}
  {"op": "memory"}            -> {"peak_rss_bytes": ..., ...}
  {"op": "exit"}
A step is forward + backward + SGD (Nesterov momentum) update on a batch that
already lives on the device; each timed step ends when its result is ready.
The 'ours' worker imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

KERAS_BACKENDS = {'keras-tf': 'tensorflow', 'keras-jax': 'jax'}


class Ours:
  """densenet_flax: jitted steps.train_step."""

  def setup(self, cmd):
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    from densenet_flax import models
    from densenet_flax import steps

    dtype = jnp.bfloat16 if cmd['dtype'] == 'bfloat16' else jnp.float32
    model = models.create_model(
      cmd['model'],
      num_classes=cmd['num_classes'],
      dtype=dtype,
      memory_efficient=cmd['memory_efficient'],
      drop_rate=0.0,
    )
    shape = (cmd['size'], cmd['size'], cmd['channels'])
    tx = optax.sgd(0.01, momentum=0.9, nesterov=True)
    state = steps.create_train_state(jax.random.key(0), model, tx, shape)
    self.batch = {
      'image': jax.random.normal(jax.random.key(1), (cmd['batch'], *shape)),
      'label': jax.random.randint(
        jax.random.key(2), (cmd['batch'],), 0, cmd['num_classes']
      ),
    }
    self.rng = jax.random.key(3)
    step = jax.jit(
      functools.partial(
        steps.train_step, spec=steps.TrainSpec(num_classes=cmd['num_classes'])
      ),
      donate_argnums=0,
    )
    start = time.perf_counter()
    compiled = step.lower(state, self.batch, self.rng).compile()
    compile_s = time.perf_counter() - start
    self.step, self.state = compiled, state
    self._run()  # first run: allocations, thread pools
    analysis = compiled.memory_analysis()
    memory = {}
    if analysis is not None:
      for key in (
        'temp_size_in_bytes',
        'argument_size_in_bytes',
        'output_size_in_bytes',
        'alias_size_in_bytes',
      ):
        memory[key] = int(getattr(analysis, key, 0))
    params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    import densenet_flax

    return {
      'compile_s': compile_s,
      'params': int(params),
      'device': str(jax.devices()[0].device_kind),
      'package': os.path.dirname(densenet_flax.__file__),
      'versions': {'jax': jax.__version__},
      'xla_memory': memory,
    }

  def _run(self):
    import jax

    self.state, metrics = self.step(self.state, self.batch, self.rng)
    jax.block_until_ready(metrics)

  def device_memory(self):
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return {
      k: stats[k] for k in ('peak_bytes_in_use', 'bytes_in_use') if k in stats
    }


class KerasPeer:
  """keras.applications (or the same recipe) with model.train_on_batch."""

  def setup(self, cmd):
    import keras
    import numpy as np

    from benchmarks.peers import keras_densenet
    from densenet_flax import models

    if cmd['dtype'] != 'float32' or cmd['memory_efficient']:
      raise ValueError('the Keras peer runs float32, without recomputation')
    shape = (cmd['size'], cmd['size'], cmd['channels'])
    keras.utils.set_random_seed(0)
    self.model = keras_densenet.from_fields(
      models.PRESETS[cmd['model']], cmd['num_classes'], shape
    )
    self.model.compile(
      optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.RandomState(1)
    self.x = rng.normal(size=(cmd['batch'], *shape)).astype(np.float32)
    self.y = rng.randint(0, cmd['num_classes'], cmd['batch'])
    start = time.perf_counter()
    self._run()  # builds and traces (and compiles) the train function
    return {
      'compile_s': time.perf_counter() - start,
      'params': int(self.model.count_params()),
      'versions': {
        'keras': keras.__version__,
        'backend': keras.backend.backend(),
      },
      'jit_compile': str(self.model.jit_compile),
    }

  def _run(self):
    self.model.train_on_batch(self.x, self.y)

  def device_memory(self):
    return {}


class TorchPeer:
  """A PyTorch eager DenseNet (torchvision's code) with torch.optim.SGD."""

  def setup(self, cmd):
    import torch

    from benchmarks.peers import torch_densenet
    from densenet_flax import models

    self.torch = torch
    self.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    model = torch_densenet.from_fields(
      models.PRESETS[cmd['model']],
      cmd['num_classes'],
      cmd['channels'],
      memory_efficient=cmd['memory_efficient'],
    ).to(self.device)
    self.channels_last = self.device == 'cuda'
    if self.channels_last:
      model = model.to(memory_format=torch.channels_last)
    self.model = model
    self.amp = cmd['dtype'] == 'bfloat16'
    self.optimizer = torch.optim.SGD(
      model.parameters(), 0.01, momentum=0.9, nesterov=True
    )
    self.x = torch.randn(
      cmd['batch'],
      cmd['channels'],
      cmd['size'],
      cmd['size'],
      device=self.device,
    )
    if self.channels_last:
      self.x = self.x.to(memory_format=torch.channels_last)
    self.y = torch.randint(
      0, cmd['num_classes'], (cmd['batch'],), device=self.device
    )
    start = time.perf_counter()
    self._run()
    return {
      'compile_s': time.perf_counter() - start,
      'params': sum(p.numel() for p in model.parameters()),
      'versions': {'torch': torch.__version__},
      'threads': torch.get_num_threads(),
    }

  def _run(self):
    torch = self.torch
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.amp):
      loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
    loss.backward()
    self.optimizer.step()
    if self.device == 'cuda':
      torch.cuda.synchronize()

  def device_memory(self):
    if self.device != 'cuda':
      return {}
    return {'peak_bytes_in_use': self.torch.cuda.max_memory_allocated()}


def make(impl: str):
  if impl == 'ours':
    return Ours()
  if impl in KERAS_BACKENDS:
    os.environ['KERAS_BACKEND'] = KERAS_BACKENDS[impl]
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    return KerasPeer()
  if impl == 'torch':
    return TorchPeer()
  raise ValueError(f'unknown implementation {impl!r}')


def main():
  impl = sys.argv[1]
  out = sys.stdout
  sys.stdout = sys.stderr  # libraries' prints must not corrupt the protocol
  try:
    worker = make(impl)
  except Exception as e:  # noqa: BLE001  (reported to the coordinator)
    worker, startup_error = None, f'{type(e).__name__}: {e}'
  for line in sys.stdin:
    cmd = json.loads(line)
    try:
      if worker is None:
        raise RuntimeError(startup_error)
      if cmd['op'] == 'setup':
        reply = worker.setup(cmd)
      elif cmd['op'] == 'time':
        times = []
        for _ in range(cmd['steps']):
          start = time.perf_counter()
          worker._run()
          times.append(time.perf_counter() - start)
        reply = {'times': times}
      elif cmd['op'] == 'memory':
        usage = resource.getrusage(resource.RUSAGE_SELF)
        reply = {
          'peak_rss_bytes': usage.ru_maxrss * 1024,
          **worker.device_memory(),
        }
      elif cmd['op'] == 'exit':
        break
      else:
        raise ValueError(f'unknown op {cmd["op"]!r}')
      reply['ok'] = True
    except Exception as e:  # noqa: BLE001
      reply = {
        'ok': False,
        'error': f'{type(e).__name__}: {e}',
        'traceback': traceback.format_exc()[-2000:],
      }
    out.write(json.dumps(reply) + '\n')
    out.flush()


if __name__ == '__main__':
  main()
