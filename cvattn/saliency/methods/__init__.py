"""Every saliency method, one file each; importing this package registers them (``cvattn.saliency.registry``).

A new method is a new file here plus one line below; the order of the lines is the order methods are listed in.
"""
from cvattn.saliency.methods import gates, attention, glimpses, gradcam  # noqa: F401
from cvattn.saliency.methods import transformer  # noqa: F401
from cvattn.saliency.methods import pooling  # noqa: F401
from cvattn.saliency.methods import gradients  # noqa: F401
from cvattn.saliency.methods import occlusion  # noqa: F401
from cvattn.saliency.methods import baselines  # noqa: F401
