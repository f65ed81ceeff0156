"""Page logic without Streamlit: what each page shows, computed from the engine and tested without
a browser."""
from importlib import import_module

_HOME = {  # public name -> the module that defines it (imported on first use)
    'CAPABILITIES': 'learn',
    'DATASET_LABELS': 'train',
    'DEFAULTS': 'train',
    'FIELD_LABELS': 'train',
    'LoadedModel': 'models',
    'METHODS': 'train',
    'METHOD_NAMES': 'train',
    'MIN_PROMPTS': 'train',
    'OBJECTIVES': 'train',
    'QUESTIONS': 'learn',
    'REFERENCE_POINT': 'train',
    'SHORT_NAMES': 'train',
    'SWEEP_BASELINES': 'train',
    'UNDEFINED_HELPFULNESS': 'models',
    'Unloaded': 'models',
    'VERDICTS': 'learn',
    'WEIGHTED_METHODS': 'train',
    'as_problem': 'learn',
    'builtin_weights': 'models',
    'capabilities': 'learn',
    'capability_summary': 'learn',
    'constraint_count': 'train',
    'dataset_error': 'train',
    'dataset_setup': 'train',
    'default_run': 'train',
    'default_step_size': 'learn',
    'describe_plane': 'train',
    'dual_path': 'learn',
    'front_points': 'train',
    'front_staircase': 'train',
    'job_name': 'train',
    'json_key': 'train',
    'live_constraints': 'train',
    'load_entry': 'models',
    'metric_frame': 'train',
    'parse_numbers': 'train',
    'parse_weights': 'train',
    'plane_key': 'train',
    'queue_frame': 'train',
    'run_objectives': 'train',
    'score_samples': 'models',
    'secondary_weights': 'train',
    'sweep_configs': 'train',
    'tau_effect': 'learn',
    'text_setup': 'train',
    'tilt_table': 'learn',
    'tilt_values': 'learn',
    'train_config': 'train',
    'unknown_words': 'models',
    'unload_model': 'models',
    'word_level': 'models',
    'worker_log_tail': 'train',
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
