"""Train a tiny LLaMA for a few steps with ``transformers.Trainer``: ``python tests/scripts/trainer_run.py OUT``.

Writes what the Trainer writes by default, ``OUT/checkpoint-N/`` (``model.safetensors``, config,
optimizer, scheduler, trainer state) every 2 steps up to step 10, and no ``trajectory.json``.
"""

import os
import sys

import torch
from transformers import Trainer, TrainingArguments

from prism_analysis.tiny import build_model


def main(out: str) -> None:
    model = build_model("llama", hidden_size=64, num_layers=2)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 1024, (64, 16), generator=g)]
    args = TrainingArguments(
        output_dir=out,
        max_steps=10,
        save_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data).train()


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main(sys.argv[1])
