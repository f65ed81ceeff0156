"""Run by tests/lm/test_lm_distributed.py under ``torchrun`` (or plainly, as one process): train a
tiny GPT on the text task with the settings given as JSON (TrainConfig fields, plus "parallel":
"ddp" | "fsdp") and, in process 0, write the metric history to the JSON file named on the
command line; a third argument names the checkpoint folder."""
import json
import sys

import torch

from mopo_core.lm import distributed
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import Trainer
from mopo_core.lm.models import tiny_gpt, word_tokenizer
from mopo_core.data.preferences import PreferenceDataset
from synthetic.text_task import TextTask, vocabulary


def train(settings: dict, checkpoint_dir=None) -> list[dict]:
    settings = dict(settings)
    parallel = settings.pop("parallel", "ddp")
    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    task = TextTask(n_prompts=6, n_candidates=6, seed=0)
    records = [r for r in task.sample_pairs(8, seed=0) if r["response_a"] != r["response_b"]]
    data = PreferenceDataset.from_records(records)
    tokenizer = word_tokenizer(vocabulary())
    model = tiny_gpt(len(tokenizer), n_layer=2, n_head=2, n_embd=32, n_positions=64, seed=0)
    trainer = Trainer(model, tokenizer, data, config, checkpoint_dir=checkpoint_dir, parallel=parallel)
    return trainer.train().history


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.init_from_env()
    history = train(json.loads(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    if distributed.rank() == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump({"world_size": distributed.world_size(), "history": history}, handle)
