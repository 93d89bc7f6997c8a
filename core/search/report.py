"""What a sweep leaves behind: the best trial as a ready-to-run experiment file, and plots.

The best file is the best trial's resolved config (every default filled in,
no search block): ``mentor run`` on it repeats that trial.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from ..config.search import SearchConfig
from .space import decoded
from .trial import CONFIG


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial, or None while there is none."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_config_text(study: optuna.Study, search: SearchConfig, path: Path) -> str | None:
    """The best trial's config as YAML, with a header that says where it comes from."""
    trial = best_trial(study)
    if trial is None or CONFIG not in trial.user_attrs:
        return None
    values = decoded(trial.params, search.space)
    lines = [
        f"# The best trial of study '{study.study_name}': trial {trial.number}, {search.metric} = {trial.value:.6g}",
        *(f"#   {key}: {value!r}" for key, value in values.items()),
        f"# Run it: mentor run {path}",
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(trial.user_attrs[CONFIG], sort_keys=False)


def figures(study: optuna.Study) -> dict[str, object]:
    """Matplotlib figures by artifact name; each one only when the study has what it needs."""
    from optuna.visualization import matplotlib as ovm

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # these plots are marked experimental
        if complete:
            out["plots/optimization_history.png"] = ovm.plot_optimization_history(study).figure
        if any(t.intermediate_values for t in trials):
            out["plots/intermediate_values.png"] = ovm.plot_intermediate_values(study).figure
        if len(complete) >= 2:
            try:
                out["plots/param_importances.png"] = ovm.plot_param_importances(study).figure
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. every value the same
                print(f"no parameter-importance plot: {exc}")
    return out
