"""Keras 3 DenseNets for the benchmarks: keras.applications where it has the
model, else the same functional recipe with this project's stems.

Not imported by the package; needs `keras` (with the TensorFlow or JAX
backend, chosen by KERAS_BACKEND before import).
"""

from __future__ import annotations

import keras
from keras import layers

BN_EPSILON = 1.001e-5  # keras.applications' value


def _bn_relu(x, name):
  x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f'{name}_bn')(x)
  return layers.Activation('relu', name=f'{name}_relu')(x)


def _dense_block(x, blocks, growth_rate, bn_size, name):
  for i in range(blocks):
    y = _bn_relu(x, f'{name}_block{i + 1}_0')
    y = layers.Conv2D(
      bn_size * growth_rate,
      1,
      use_bias=False,
      name=f'{name}_block{i + 1}_1_conv',
    )(y)
    y = _bn_relu(y, f'{name}_block{i + 1}_1')
    y = layers.Conv2D(
      growth_rate,
      3,
      padding='same',
      use_bias=False,
      name=f'{name}_block{i + 1}_2_conv',
    )(y)
    x = layers.Concatenate(name=f'{name}_block{i + 1}_concat')([x, y])
  return x


def from_fields(fields: dict, num_classes: int, input_shape) -> keras.Model:
  """The Keras peer of a densenet_flax preset (its fields dict), logits out."""
  if (
    fields['stem'] == 'imagenet'
    and fields['growth_rate'] == 32
    and tuple(fields['block_sizes'])
    in ((6, 12, 24, 16), (6, 12, 32, 32), (6, 12, 48, 32))
  ):
    ctor = {
      (6, 12, 24, 16): keras.applications.DenseNet121,
      (6, 12, 32, 32): keras.applications.DenseNet169,
      (6, 12, 48, 32): keras.applications.DenseNet201,
    }[tuple(fields['block_sizes'])]
    return ctor(
      weights=None,
      input_shape=input_shape,
      classes=num_classes,
      classifier_activation=None,
    )
  inputs = keras.Input(input_shape)
  k, init = fields['growth_rate'], fields['num_init_features']
  if fields['stem'] == 'imagenet':
    x = layers.ZeroPadding2D(3)(inputs)
    x = layers.Conv2D(init, 7, strides=2, use_bias=False)(x)
    x = _bn_relu(x, 'conv1')
    x = layers.ZeroPadding2D(1)(x)
    x = layers.MaxPooling2D(3, strides=2)(x)
  elif fields['stem'] == 'fer':
    x = layers.Conv2D(init, 3, padding='same', use_bias=False)(inputs)
    x = _bn_relu(x, 'conv1')
    x = layers.MaxPooling2D(2)(x)
  else:
    x = layers.Conv2D(init, 3, padding='same', use_bias=False)(inputs)
  features = init
  for i, blocks in enumerate(fields['block_sizes']):
    x = _dense_block(x, blocks, k, fields['bn_size'], f'conv{i + 2}')
    features += blocks * k
    if i != len(fields['block_sizes']) - 1:
      features = int(features * fields['compression'])
      x = _bn_relu(x, f'pool{i + 2}')
      x = layers.Conv2D(features, 1, use_bias=False, name=f'pool{i + 2}_conv')(
        x
      )
      x = layers.AveragePooling2D(2, strides=2)(x)
  x = _bn_relu(x, 'final')
  x = layers.GlobalAveragePooling2D()(x)
  outputs = layers.Dense(num_classes, name='predictions')(x)
  return keras.Model(inputs, outputs)
