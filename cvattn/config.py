"""Build a run's model and datamodule from its ``train.py`` config, without training: for notebooks, the saliency
CLI and bench/ scripts."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import yaml

from cvattn.cli import CvattnCLI


def build_from_config(config: str | os.PathLike) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The (untrained) LightningModule and the datamodule of a ``train.py`` config (its ``model`` and ``data``
    sections; ``trainer`` settings play no part here, and a run's saved config may hold unparsable ones)."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"Config {str(config)!r} does not exist (or is not a file); give the YAML the model "
                                f"was trained with, e.g. runs/<name>/version_N/config.yaml.")
    try:
        sections = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"Config {str(config)!r} is not valid YAML: {err}") from None
    if not isinstance(sections, dict) or not {"model", "data"} <= sections.keys():
        raise ValueError(f"Config {str(config)!r} needs 'model' and 'data' sections, as train.py configs have.")
    args = {"model": sections["model"], "data": sections["data"],
            "trainer": {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}}
    with warnings.catch_warnings():
        # LightningCLI warns when `args` is given while sys.argv holds this program's own flags.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = CvattnCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        run=False, save_config_callback=None, seed_everything_default=False, args=args)
    return cli.model, cli.datamodule
