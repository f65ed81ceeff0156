"""Preference data: one schema for K-objective pairwise preferences and loaders for public formats.
No torch."""
from importlib import import_module

_HOME = {  # public name -> the module that defines it (imported on first use)
    'DEFAULT_OBJECTIVE': 'public_formats',
    'FIELDS': 'preferences',
    'FORMATS': 'public_formats',
    'LABEL_ATOL': 'preferences',
    'MAX_DECOMPRESSED_BYTES': 'public_formats',
    'MAX_LISTED_ERRORS': 'preferences',
    'PKU_LABEL_FIELDS': 'public_formats',
    'PKU_OBJECTIVES': 'public_formats',
    'PreferenceDataset': 'preferences',
    'PreviewResult': 'preview',
    'PreferencePair': 'preferences',
    'PublicDataset': 'public_formats',
    'READ_CHUNK_BYTES': 'preferences',
    'SNIFF_ROWS': 'public_formats',
    'SUFFIXES': 'preferences',
    'TIE': 'preferences',
    'format_preview': 'preview',
    'format_report': 'public_formats',
    'load_preferences': 'preferences',
    'load_public': 'public_formats',
    'numbered_lines': 'preferences',
    'parse_json_lines': 'preferences',
    'save_preferences': 'preferences',
    'threshold_preview': 'preview',
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
