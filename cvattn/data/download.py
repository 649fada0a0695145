"""Find a dataset's files, or have torchvision download them and look again: the one path every datamodule takes.

The caller says what "found" means (``find`` returns the files, or ``None``) and words its own
``FileNotFoundError`` (where it looked, how to get the files), ending with the note returned here, which says what
the download did.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torchvision

Found = TypeVar("Found")


def find_or_download(find: Callable[[], Found | None], torchvision_name: str, download: bool,
                     **download_kwargs) -> tuple[Found | None, str]:
    """``(find(), "")`` if the files are there; else, with ``download``, ``torchvision.datasets.<torchvision_name>
    (**download_kwargs, download=True)`` runs and ``find()`` looks again.

    Returns ``(found, note)``: ``found`` is ``None`` when the files are still missing, and ``note`` then says why,
    for the caller's error: ``'download=False'``, ``'the download failed: <error>'``, or that it finished but the
    files are still missing.
    """
    if (found := find()) is not None:
        return found, ""
    if not download:
        return None, "download=False"
    try:
        # Looked up at call time, so a test (or a user) can replace the torchvision dataset class.
        getattr(torchvision.datasets, torchvision_name)(**download_kwargs, download=True)
        note = "the download finished but left files missing"
    except Exception as err:  # network, HTTP and archive errors all mean "not available"
        note = f"the download failed: {type(err).__name__}: {err}"
    return find(), note
