#!/usr/bin/env python
"""tools/train_net.py for tests: same set-up and launch, and every rank also saves its final
weights before and after training to ``OUTPUT_DIR/rank<R>_{init,final}.pth`` (only rank 0
writes checkpoints otherwise)."""

import os
import sys

import torch
from detectron2.utils import comm

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import train_net  # noqa: E402  (tools/train_net.py)
from rethink_d2.engine import Trainer, rethink_argument_parser  # noqa: E402
from rethink_d2.engine.defaults import launch_cli  # noqa: E402


def main(args):
    cfg = train_net.setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    prefix = os.path.join(cfg.OUTPUT_DIR, f"rank{comm.get_rank()}")
    torch.save(model.state_dict(), prefix + "_init.pth")
    trainer.train()
    torch.save(model.state_dict(), prefix + "_final.pth")


if __name__ == "__main__":
    launch_cli(main, rethink_argument_parser().parse_args())
