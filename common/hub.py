"""save_pretrained / from_pretrained on both models, in the form of huggingface_hub's
PyTorchModelHubMixin: a folder of config.json (the network's shape), model.safetensors and a
model card (README.md), which `huggingface_hub.upload_folder` publishes as it is.
from_pretrained also takes any run folder or a shipped run's name, offline, as the stage's
loader does (load_tokenizer, load_prior)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from common.checkpoint import CheckpointError, atomic_write_text, load_weights, save_weights
from common.pretrained import WEIGHTS, is_run
from common.runs import load_weights_into

HUB_CONFIG = "config.json"
CARD = """---
library_name: vqgen
tags: [vqgen, {stage}]
---
# vqgen {stage}

A vqgen {stage}: {what}.

```python
from {module} import {name}
model = {name}.from_pretrained("{folder}")   # a folder, offline
```

`config.json` holds the network's shape; `model.safetensors` its weights (nothing is unpickled).
"""


class Pretrained:
    """Mixed into a model built as cls(shape), `shape` a dataclass of its sizes."""
    stage: str               # "tokenizer" | "prior": tags the weights file
    shape_class: type        # the dataclass config.json is read into
    what: str                # one line for the model card

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json, model.safetensors and README.md into folder (made if missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"stage": self.stage, **dataclasses.asdict(self.shape)}
        atomic_write_text(folder / HUB_CONFIG, json.dumps(config, indent=1) + "\n")
        save_weights(folder / WEIGHTS, self.state_dict(), self.stage)
        cls = type(self)
        atomic_write_text(folder / "README.md", CARD.format(stage=self.stage, what=self.what, module=cls.__module__,
                                                            name=cls.__name__, folder=folder.name))
        return folder

    @classmethod
    def from_pretrained(cls, location: str | Path, device: str = "cpu"):
        """The model in eval mode from a save_pretrained folder, a run folder or a shipped run's
        name; one-line errors (CheckpointError) otherwise."""
        folder = Path(location)
        if not (folder / HUB_CONFIG).is_file() or is_run(folder):
            return cls.load_run(location, device)
        config = json.loads((folder / HUB_CONFIG).read_text())
        stage = config.pop("stage", None)
        if stage != cls.stage:
            raise CheckpointError(f"{folder / HUB_CONFIG}: holds a vqgen {stage or 'nothing'}, not a {cls.stage}: "
                                  f"read it with that stage's from_pretrained")
        try:
            model = cls(cls.shape_class(**config))
        except TypeError as err:   # a key this version does not know
            raise CheckpointError(f"{folder / HUB_CONFIG}: {err}; saved by another version of vqgen?") from None
        load_weights_into(model, load_weights(folder / WEIGHTS, cls.stage), folder / WEIGHTS)
        return model.to(device).eval()

    @classmethod
    def load_run(cls, location: str | Path, device: str):
        """The stage's own loader: a run folder or a shipped run's name."""
        raise NotImplementedError
