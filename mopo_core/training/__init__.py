"""Training runs end to end: the text task and dataset runs behind one interface (``tasks``), the
text-task comparison, and the job queue with its worker. Names are re-exported lazily (they
import torch)."""
from importlib import import_module

_HOME = {  # public name -> the module that defines it (imported on first use)
    'ACTIVE_STATUSES': 'jobs',
    'ComparisonSettings': 'text_comparison',
    'DATA_FORMATS': 'dataset_task',
    'DatasetSetup': 'dataset_task',
    'DatasetTask': 'dataset_task',
    'DatasetTraining': 'tasks',
    'EXIT_ANOTHER_WORKER': 'jobs',
    'JOB_KINDS': 'jobs',
    'JOB_STATUSES': 'jobs',
    'Job': 'jobs',
    'RESUMABLE_RUN_STATUSES': 'jobs',
    'RESUMABLE_STATUSES': 'tasks',
    'SetupCheck': 'dataset_task',
    'SetupError': 'dataset_task',
    'Splits': 'dataset_task',
    'TASKS': 'tasks',
    'TextTaskSetup': 'text_task',
    'TextTraining': 'tasks',
    'TrainingTask': 'tasks',
    'WorkerAlreadyRunning': 'jobs',
    'build_text_task': 'text_task',
    'cancel': 'jobs',
    'chat_dataset': 'dataset_task',
    'check_judge': 'dataset_task',
    'check_setup': 'dataset_task',
    'check_text_run': 'text_task',
    'enqueue_resume': 'jobs',
    'enqueue_training': 'jobs',
    'ensure_worker': 'jobs',
    'evaluate_dataset_checkpoint': 'dataset_task',
    'evaluate_on_task': 'text_task',
    'evaluate_text_checkpoint': 'text_task',
    'get_job': 'jobs',
    'jobs_dir': 'jobs',
    'judge_summary': 'dataset_task',
    'list_jobs': 'jobs',
    'load_data': 'dataset_task',
    'load_judge': 'dataset_task',
    'load_splits': 'dataset_task',
    'lora_settings': 'dataset_task',
    'model_directory': 'dataset_task',
    'point_params': 'common',
    'preference_evaluation': 'dataset_task',
    'reconcile': 'jobs',
    'run_comparison': 'text_comparison',
    'run_worker': 'jobs',
    'secondary_experts': 'common',
    'summarise': 'text_comparison',
    'task_for_setup': 'tasks',
    'task_named': 'tasks',
    'task_of': 'tasks',
    'task_of_job_kind': 'tasks',
    'task_of_run': 'tasks',
    'task_oracle': 'text_task',
    'text_task': 'text_task',
    'train_config_from': 'tasks',
    'train_on_dataset': 'dataset_task',
    'train_on_text_task': 'text_task',
    'training_memory': 'dataset_task',
    'truncate_responses': 'dataset_task',
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
