"""What ``check_function`` hands back: one :class:`CheckResult` per check, gathered in a :class:`Report`
whose text is what a failing check raises."""

from __future__ import annotations

from dataclasses import dataclass, field

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class Errors:
    """The largest absolute and relative error of a comparison, and where each was found
    (e.g. ``"input 1 (weight)[2, 0]"``). Relative error = |got − expected| / |expected|."""

    max_abs: float = 0.0
    abs_where: str = ""
    max_rel: float = 0.0
    rel_where: str = ""

    def merge(self, other: Errors | None) -> Errors:
        """The larger of each error, with its location."""
        if other is None:
            return self
        merged = Errors(self.max_abs, self.abs_where, self.max_rel, self.rel_where)
        if other.max_abs > merged.max_abs or not merged.abs_where:
            merged.max_abs, merged.abs_where = other.max_abs, other.abs_where
        if other.max_rel > merged.max_rel or not merged.rel_where:
            merged.max_rel, merged.rel_where = other.max_rel, other.rel_where
        return merged

    def __str__(self) -> str:
        if not self.abs_where:
            return "no values compared"
        if self.max_abs == 0:
            return "identical to the reference (error 0)"
        return (
            f"largest abs error {self.max_abs:.2e} at {self.abs_where}, "
            f"largest rel error {self.max_rel:.2e} at {self.rel_where}"
        )


@dataclass
class CheckResult:
    """One check: its status (``"passed"``, ``"failed"`` or ``"skipped"``), the largest errors found
    over every layout it ran on, a diagnosis in words when it failed, and a note (the layouts it
    covered, or why it was skipped)."""

    name: str
    status: str
    errors: Errors | None = None
    diagnosis: str = ""
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def head(self) -> str:
        head = f"{self.status.upper():8}{self.name}"
        if self.status == SKIPPED:
            return f"{head}: {self.note}"
        return head + (f" [{self.note}]" if self.note else "")

    def detail(self) -> list[str]:
        """The largest errors and the diagnosis, indented, under the head line."""
        lines = []
        if self.status != SKIPPED and self.errors is not None and self.errors.abs_where:
            lines.append(f"        {self.errors}")
        if self.status != SKIPPED and self.diagnosis:
            lines += [f"        -> {line}" for line in self.diagnosis.splitlines()]
        return lines

    def lines(self) -> list[str]:
        return [self.head(), *self.detail()]


@dataclass
class Report:
    """The results of every check. ``str(report)`` is the readable report; ``report.passed`` is
    True when no check failed (skipped checks do not fail it)."""

    title: str
    results: list[CheckResult] = field(default_factory=list)
    context: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if result.failed]

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no check named {name!r}; the checks are {[result.name for result in self.results]}")

    def __str__(self) -> str:
        statuses = [result.status for result in self.results]
        counts = {status: statuses.count(status) for status in (FAILED, PASSED, SKIPPED)}
        verdict = "FAILED" if self.failures else "passed"
        summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
        lines = [f"{self.title}: {verdict} ({summary})", *(f"  {line}" for line in self.context)]
        for group in _same_diagnosis(self.failures):  # one mistake seen by several checks: said once
            lines += [result.head() for result in group]
            with_errors = next((result for result in group if result.errors is not None and result.errors.abs_where),
                               group[0])
            lines += [line for line in with_errors.detail() if not line.lstrip().startswith("->")]
            lines += [line for line in group[0].detail() if line.lstrip().startswith("->")]
        for result in self.results:
            if not result.failed:
                lines += result.lines()
        return "\n".join(lines)


def _same_diagnosis(failures: list[CheckResult]) -> list[list[CheckResult]]:
    """The failures grouped by their diagnosis, in the order each diagnosis is first met."""
    groups: dict[str, list[CheckResult]] = {}
    for index, result in enumerate(failures):
        groups.setdefault(result.diagnosis or f"(no diagnosis {index})", []).append(result)
    return list(groups.values())
