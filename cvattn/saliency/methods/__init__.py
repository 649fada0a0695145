"""Every saliency method, one file each; importing this package registers them (``cvattn.saliency.registry``).

A new method is a new file here plus one line below; the order of the lines is the order methods are listed in.
"""
from cvattn.saliency.methods import gates, attention, glimpses, gradcam, baselines  # noqa: F401
