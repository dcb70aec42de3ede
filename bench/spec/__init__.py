"""What a study asks for, as data: trial configurations (:mod:`.config`) and study
specifications (:mod:`.study`). Parsing and validation only; nothing here imports torch."""

from bench.spec.config import (
    CONFIG_FIELDS,
    DEFAULTS,
    LR_SCALING_RULES,
    OPTIONS,
    TRIAL_OPTIONS,
    TrialConfig,
    from_mapping,
    parse_assignment,
    parse_assignments,
    readers_of,
    scaled_lr,
    trial_from_assignments,
)
from bench.spec.study import (
    StudySpec,
    check_options_read,
    default_ablations_dir,
    is_sweep,
    list_specs,
    load_spec,
    resolve_spec_path,
)

__all__ = [
    "CONFIG_FIELDS", "DEFAULTS", "LR_SCALING_RULES", "OPTIONS", "TRIAL_OPTIONS", "StudySpec", "TrialConfig",
    "check_options_read", "default_ablations_dir", "from_mapping", "is_sweep", "list_specs", "load_spec",
    "parse_assignment", "parse_assignments", "readers_of", "resolve_spec_path", "scaled_lr", "trial_from_assignments",
]
