"""``python -m cvattn.saliency``: maps for your own photos with a timm model (``--image ... --model NAME``) or for
a trained run (``--checkpoint CKPT --config CFG.yaml``); see ``cvattn.saliency.cli`` or ``--help``."""
import sys

from cvattn.saliency.cli import main

sys.exit(main())
