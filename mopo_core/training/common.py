"""What the text task and the dataset task both use, below both (neither imports the other, and
:mod:`mopo_core.training.tasks`, which chooses between them, imports each): the DPO experts
of MODPO's margin and Rewarded Soups (:func:`secondary_experts`) and the parameters a run's
evaluated point records (:func:`point_params`)."""
from __future__ import annotations

import copy

from mopo_core.data.preferences import PreferenceDataset
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import Trainer


def secondary_experts(config: TrainConfig, reference, tokenizer, train: PreferenceDataset, store=None,
                      run_config: dict | None = None) -> list:
    """One DPO policy per secondary objective, trained from a copy of ``reference`` (e.g. a
    LoRA-wrapped starting model) on that objective's labels with ``config``'s budget (tau,
    steps, batch size, lr, seed): MODPO's margin models and Rewarded Soups' secondary experts.
    Each expert's run in ``store`` gets ``run_config`` (default ``{"task": "text"}``) and its role."""
    experts = []
    for name in train.objectives[1:]:
        expert = copy.deepcopy(reference)
        dpo = TrainConfig(method="dpo", tau=config.tau, steps=config.steps, batch_size=config.batch_size,
                          lr=config.lr, seed=config.seed, checkpoint_every=config.steps)
        Trainer(expert, tokenizer, train.select([name]), dpo, store=store,
                run_config={**(run_config or {"task": "text"}), "role": f"secondary expert ({name})"}).train()
        experts.append(expert.eval())
    return experts


def point_params(config: TrainConfig) -> dict:
    """The training settings a run's evaluated point records as its parameters."""
    return {"method": config.method, "thresholds": list(config.thresholds), "tau": config.tau,
            "online": config.online, "objective_weights": config.objective_weights}
