"""``python -m cvattn.saliency --checkpoint CKPT --config CFG.yaml --out DIR``; see ``cvattn.saliency.cli``."""
import sys

from cvattn.saliency.cli import main

sys.exit(main())
