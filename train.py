"""Train, validate and test a cvattn model from a YAML config: ``python train.py --config configs/<name>.yaml``.

Run ``python train.py --help`` for every option; any config key can be overridden, e.g.
``--trainer.max_epochs 3 --model.init_args.lr 0.05``.
"""
from cvattn.cli import main

if __name__ == "__main__":
    main()
