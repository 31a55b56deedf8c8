"""Training entry point (the training loop lands with the training issue).

For now it points at the model API; see README.md.
"""

if __name__ == '__main__':
  print('Training is not wired up yet. Build a model with '
        "densenet_flax.models.create_model('fer_densenet', num_classes=7); "
        'see README.md.')
