"""Data: dataset specs (no TensorFlow) and the tf.data input pipeline."""
