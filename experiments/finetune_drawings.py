"""Fine-tune a trained run on MNIST plus the digits people drew on the canvas, and see what it cost.

    python -m digitjax.train --config experiments/finetune_drawings.py --workdir checkpoints/finetuned \\
        --config.init_from=checkpoints/default --config.drawings=instance/drawings.sqlite

Starts from `init_from`'s trained model (its weights and batch statistics), trains on MNIST's
training split plus the store's (or an export's) training drawings, each `drawings_weight` times,
and evaluates both test sets each epoch (metrics.jsonl splits `test` and `drawings`). Compare with
`python -m digitjax.evaluate --workdir INIT_FROM --drawings STORE` for the before; the figures
measured are in experiments/RESULTS.md.
"""

from experiments import default


def get_config():
    config = default.get_config()
    config.init_from = "checkpoints/default"  # the trained run to start from (same model)
    config.drawings = "instance/drawings.sqlite"  # the canvas's store (DRAWINGS_DB), or a folder exported from it
    config.drawings_weight = 10  # each training drawing this many times per epoch, beside MNIST's 55,000
    config.num_epochs = 1
    config.learning_rate = 3e-4  # a tenth of training's peak: adjust, do not relearn
    config.warmup_fraction = 0.1
    return config
