"""A toy task for `fit` under torchrun, for tests/test_distributed.py: a small linear model
on fixed random data, each step slowed by step_s so that a signal lands mid-run, and a loss
that turns non-finite on one rank at one step when asked.

    torchrun --nproc_per_node 2 tests/ddp_toy.py out_dir=DIR [step_s=0.05] [nan_rank=1 nan_step=3] [key=value ...]
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common.config import load_config, TrainConfig  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.training import Task, fit  # noqa: E402
from common.tracking import make_accelerator  # noqa: E402


def main(argv: list[str]) -> None:
    extra = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("step_s", "nan_rank", "nan_step"))
    cfg = load_config(TrainConfig, [a for a in argv if a.split("=", 1)[0] not in extra])
    step_s, nan_rank, nan_step = float(extra.get("step_s", 0)), int(extra.get("nan_rank", -1)), \
        int(extra.get("nan_step", -1))
    accelerator = make_accelerator("none")
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / f"pid-{accelerator.process_index}").write_text(str(os.getpid()))
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    steps = {"done": 0}

    def loss_fn(model, batch):
        time.sleep(step_s)
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        if accelerator.process_index == nan_rank and steps["done"] == nan_step:
            loss = loss * float("nan")
        steps["done"] += 1
        return loss, {}

    task = Task(stage="toy", model=nn.Linear(4, 1), train_tensors=(x, y), loss_fn=loss_fn,
                evaluate=lambda m, limit: {"fit": nn.functional.mse_loss(m(x), y).item()})
    fit(cfg, task, accelerator)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
