"""The Bench: which sections a profile runs, in what order, and the rows and results they record."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .audio import Clip, prepare_clips
from .common import SECTION_NAMES, Profile, log
from .concurrency import section_concurrency
from .limits import machine_probe, section_limit, stage_fractions
from .models import LoadedModel, close_model, load_model
from .native import section_native
from .streaming import section_streaming
from .whole_file import section_whole_file


class Bench:
    def __init__(self, profile: Profile, sections: Sequence[int], model_names: Sequence[str]) -> None:
        self.profile = profile
        self.wanted_sections = list(sections)
        self.model_names = list(model_names)
        self.models: dict[str, LoadedModel] = {}
        self.clips: dict[float, Clip] = {}
        self.sections: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.early_probe: dict[str, Any] | None = None  # sgemm and bandwidth at the start (section 5)

    def row(
        self,
        model: LoadedModel | None,
        section: int,
        metric: str,
        value: Any,
        target: tuple[str, float] | str | None = None,
    ) -> None:
        """One line of the table; `target` is (">=" or "<=", limit), or "same" for a yes/no that must be yes."""
        ok: bool | None = None
        text: str | None = None
        if isinstance(target, tuple):
            op, limit = target
            text = f"{op} {limit:g}"
            if value is not None:
                ok = value <= limit if op == "<=" else value >= limit
        elif target is not None:
            text = target
            ok = bool(value)
        self.rows.append(
            {
                "model": model.name if model else "-",
                "section": section,
                "metric": metric,
                "value": value,
                "target": text,
                "ok": ok,
            }
        )

    def section_result(self, section: str, model: LoadedModel, result: dict[str, Any]) -> None:
        self.sections.setdefault(section, {})[model.name] = result

    def skip_model_section(self, section: str, model: LoadedModel, reason: str) -> None:
        self.skipped[f"{section}/{model.name}"] = reason
        log(f"skipped {section} for {model.name}: {reason}")

    def plan(self) -> list[int]:
        """The sections this profile runs; the others are recorded as skipped, with why."""
        for section in self.wanted_sections:
            if section not in self.profile.runs_sections:
                self.skipped[SECTION_NAMES[section]] = (
                    "--quick does not run it (needs the full bench: python scripts/bench.py)"
                )
        return [s for s in self.wanted_sections if s in self.profile.runs_sections]

    def run(self) -> None:
        profile = self.profile
        todo = self.plan()
        log(f"profile {profile.name}: sections {todo}, models {self.model_names}")
        if any(s in todo for s in (1, 2, 3, 4)):
            self.clips = prepare_clips(profile.clips)
        for name in self.model_names:
            log(f"loading model {name}")
            model = load_model(name)
            self.models[model.name] = model
        if 5 in todo:
            log("5 limit: a first sgemm and bandwidth probe")
            self.early_probe = machine_probe(profile)
        for section in todo:
            if section == 5:
                section_limit(self)
                continue
            for model in self.models.values():
                try:
                    SECTION_RUNNERS[section](self, model)
                except Exception as exc:  # one failing part must not lose the others' numbers
                    self.skipped[f"{SECTION_NAMES[section]}/{model.name}"] = (
                        f"failed: {type(exc).__name__}: {exc}"
                    )
                    log(f"section {section} failed for {model.name}:\n{traceback.format_exc()}")
        stage_fractions(self)
        for model in self.models.values():
            close_model(model)


SECTION_RUNNERS: dict[int, Callable[[Bench, LoadedModel], None]] = {
    1: section_whole_file,
    2: section_streaming,
    3: section_native,
    4: section_concurrency,
}
