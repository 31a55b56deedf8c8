"""Export a trained run for apps: TensorFlow SavedModel, TFLite or ONNX.

  python -m densenet_flax.export --workdir runs/fer2013 --format saved_model \
      [--checkpoint best] [--output PATH] [--batch 1]

The exported function takes a float32 batch [N, S, S, C] of 0-255 pixels at
the model's input size (already resized and cropped: S = config.image_size,
C = config.channels), normalises inside with the run's mean/std, and returns
class probabilities [N, num_classes]. SavedModel and ONNX take any N; TFLite
has a fixed N (--batch, default 1), because the converter does not take the
dynamic-shape gathers that a variable batch produces. The class names are
written beside the model (labels.txt in the SavedModel, <stem>.labels.txt
beside a file).

SavedModel and TFLite go through jax2tf (JAX's exporter to TensorFlow); it
serialises the compiled JAX function (StableHLO) inside the SavedModel, and
the TFLite converter lowers that to builtin ops. ONNX (the [onnx] extra, no
TensorFlow) is written by onnx_export, our translator from the traced
function's jaxpr to ONNX ops (why not jax2onnx or tf2onnx: its docstring);
the graph computes in float32, which ONNX Runtime's CPU kernels take,
whatever dtype the run computed in.
"""

from __future__ import annotations

import os

import jax
import numpy as np

FORMATS = ('saved_model', 'tflite', 'onnx')
DEFAULT_NAMES = {
  'saved_model': 'saved_model',
  'tflite': 'model.tflite',
  'onnx': 'model.onnx',
}


def serving_function(classifier, compute_dtype=None):
  """float32 [N, S, S, C] 0-255 pixels -> probabilities, normalised inside.

  compute_dtype: the dtype the model computes in, if not its own.
  """
  mean = np.asarray(classifier.mean, np.float32)
  std = np.asarray(classifier.std, np.float32)
  channels = classifier.input_shape[-1]
  model, variables = classifier.model, classifier.variables
  if compute_dtype is not None:
    model = model.clone(dtype=compute_dtype)

  def serve(pixels):
    x = (
      (pixels / 255.0 - mean) / std
      if len(mean) == channels
      else ((pixels / 255.0 - mean[0]) / std[0])
    )
    return jax.nn.softmax(model.apply(variables, x, train=False))

  return serve


def export(
  classifier, output: str, fmt: str = 'saved_model', batch: int = 1
) -> str:
  """Writes the model (and its labels beside it); returns the model's path.

  `batch` is TFLite's fixed batch size; the other formats take any.
  """
  if fmt not in FORMATS:
    raise ValueError(f'format must be one of {FORMATS}; got {fmt!r}')
  if fmt == 'saved_model':
    _export_tf(classifier, output, fmt, batch)
    labels = os.path.join(output, 'labels.txt')
  else:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if fmt == 'onnx':
      _export_onnx(classifier, output)
    else:
      _export_tf(classifier, output, fmt, batch)
    labels = os.path.splitext(output)[0] + '.labels.txt'
  with open(labels, 'w') as f:
    f.write('\n'.join(classifier.class_names) + '\n')
  return output


def _export_tf(classifier, output: str, fmt: str, batch: int) -> None:
  import tensorflow as tf
  from jax.experimental import jax2tf

  height, width, channels = classifier.input_shape
  serve = serving_function(classifier)
  if fmt == 'saved_model':
    converted = jax2tf.convert(
      serve, with_gradient=False, polymorphic_shapes=['(b, _, _, _)']
    )
    spec = tf.TensorSpec(
      [None, height, width, channels], tf.float32, name='pixels'
    )
  else:
    converted = jax2tf.convert(serve, with_gradient=False)
    spec = tf.TensorSpec(
      [batch, height, width, channels], tf.float32, name='pixels'
    )
  module = tf.Module()
  module.serve = tf.function(converted, autograph=False, input_signature=[spec])
  if fmt == 'saved_model':
    tf.saved_model.save(
      module, output, signatures={'serving_default': module.serve}
    )
    return
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
    [module.serve.get_concrete_function()], module
  )
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  with open(output, 'wb') as f:
    f.write(converter.convert())


def onnx_model(classifier):
  """The serving function as an onnx.ModelProto: input 'pixels' [b, S, S, C],
  output 'probabilities' [b, num_classes], b any batch size."""
  import jax.numpy as jnp

  from densenet_flax import layers
  from densenet_flax import onnx_export

  (batch,) = jax.export.symbolic_shape('b')
  serve = serving_function(classifier, compute_dtype=jnp.float32)
  # The generic kernels are plain lax ops, which the translator covers; the
  # CPU kernels are tuned for XLA:CPU's training step.
  with layers.use_kernels('generic'):
    return onnx_export.to_onnx(
      serve,
      [jax.ShapeDtypeStruct((batch, *classifier.input_shape), jnp.float32)],
      input_names=['pixels'],
      output_names=['probabilities'],
      graph_name='densenet_flax',
    )


def _export_onnx(classifier, output: str) -> None:
  import onnx

  onnx.save(onnx_model(classifier), output)


def main(argv=None):
  from absl import app
  from absl import flags

  from densenet_flax import cli

  flags.DEFINE_string('workdir', None, 'A training workdir.')
  flags.mark_flag_as_required('workdir')
  flags.DEFINE_enum('format', 'saved_model', list(FORMATS), 'What to write.')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step.")
  flags.DEFINE_string(
    'output',
    None,
    'Default: WORKDIR/export/ + saved_model, model.tflite or model.onnx.',
  )
  flags.DEFINE_integer('batch', 1, 'TFLite: the fixed batch size.')
  cli.define_verbose_flag()

  def command(args):
    from densenet_flax import accelerators
    from densenet_flax.inference import Classifier

    f = flags.FLAGS
    cli.start_command(args, f.verbose, tensorflow=f.format != 'onnx')
    accelerators.log_backend()
    classifier = Classifier.from_workdir(f.workdir, f.checkpoint)
    output = f.output or os.path.join(
      f.workdir, 'export', DEFAULT_NAMES[f.format]
    )
    path = export(classifier, output, f.format, f.batch)
    print(
      f'wrote {path} (step {classifier.step}, input '
      f'{list(classifier.input_shape)} 0-255 float32, output '
      f'{len(classifier.class_names)} probabilities)'
    )

  app.run(command, argv=argv)


if __name__ == '__main__':
  main()
