"""Training, evaluation and the feature cache; nothing here knows MLflow.

- `device`: where to compute, in what precision, and a batch's way to the model;
- `augmentation`: light, radiograph-safe augmentation of fine-tuning batches;
- `features`: frozen mode's backbone features, extracted once per split and cached;
- `loop`: one pass over a split, training with early stopping and resumable state, prediction;
- `snapshots`: the epoch's weights read for checkpoints without a copy in the training thread;
- `setup`: one configuration's data, weights and device, resolved once.
"""
