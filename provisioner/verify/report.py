"""The verify report: one row per check (check, expectation, result, duration), as JSON and JUnit XML."""

from __future__ import annotations

import datetime
import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASSED = "passed"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """One promise checked once: what it is, what was expected, what happened and how long it took."""

    check: str
    expectation: str
    result: str  # passed, failed or skipped
    seconds: float
    detail: str = ""  # why it failed or was skipped, or a measurement worth reading (a spread, a count)
    group: str = ""  # the selectable check id this row belongs to (`--only GROUP`)

    @property
    def ok(self) -> bool:
        return self.result != FAILED


@dataclass
class VerifyReport:
    cluster: str
    results: list[CheckResult] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    files: list[str] = field(default_factory=list)  # report files written (JSON, testinfra JUnit)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.result == FAILED]

    def counts(self) -> dict[str, int]:
        counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
        for r in self.results:
            counts[r.result] = counts.get(r.result, 0) + 1
        return counts

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Table rows for a person: check, expectation, result (with detail), duration."""
        rows = []
        for r in self.results:
            result = r.result if not r.detail else f"{r.result}: {r.detail}"
            rows.append((r.check, r.expectation, result, f"{r.seconds:.1f}s"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "started": self.started,
            "ok": self.ok,
            "counts": self.counts(),
            "results": [asdict(r) for r in self.results],
        }

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def write_junit(self, path: Path) -> Path:
        suite = ET.Element(
            "testsuite",
            name=f"provisioner verify {self.cluster}",
            tests=str(len(self.results)),
            failures=str(self.counts()[FAILED]),
            skipped=str(self.counts()[SKIPPED]),
            time=f"{sum(r.seconds for r in self.results):.3f}",
            timestamp=self.started,
        )
        for r in self.results:
            case = ET.SubElement(
                suite, "testcase", classname=r.group or "verify", name=r.check, time=f"{r.seconds:.3f}"
            )
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="check", value=r.check)
            ET.SubElement(props, "property", name="expectation", value=r.expectation)
            if r.result == FAILED:
                ET.SubElement(case, "failure", message=r.detail).text = r.detail
            elif r.result == SKIPPED:
                ET.SubElement(case, "skipped", message=r.detail)
            elif r.detail:
                ET.SubElement(case, "system-out").text = r.detail
        path.parent.mkdir(parents=True, exist_ok=True)
        tree = ET.ElementTree(suite)
        ET.indent(tree)
        tree.write(path, encoding="utf-8", xml_declaration=True)
        return path

    def write(self, path: Path) -> Path:
        """JUnit XML when the name ends in .xml, JSON otherwise."""
        return self.write_junit(path) if path.suffix == ".xml" else self.write_json(path)


def from_junit(xml_text: str, group_of: dict[str, str] | None = None) -> list[CheckResult]:
    """Rows from the JUnit XML pytest wrote for the testinfra modules.

    Each test case carries ``check`` and ``expectation`` properties (set by hosts/conftest.py); a case
    without them (a collection error) still becomes a row, so nothing that failed is dropped.
    """
    root = ET.fromstring(xml_text)
    results = []
    for case in root.iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        name = props.get("check") or f"{case.get('classname', '')}::{case.get('name', '')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            result, detail = FAILED, _short(failure.get("message") or failure.text or "")
        elif skipped is not None:
            result, detail = SKIPPED, _short(skipped.get("message") or "")
        else:
            result, detail = PASSED, props.get("detail", "")
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        group = (group_of or {}).get(module, module.removeprefix("test_"))
        results.append(
            CheckResult(
                check=name,
                expectation=props.get("expectation", ""),
                result=result,
                seconds=float(case.get("time") or 0),
                detail=detail,
                group=group,
            )
        )
    return results


def _short(message: str, limit: int = 400) -> str:
    """The assertion's own message, not pytest's rewrite of the expression below it."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = lines[0].removeprefix("AssertionError: ") if lines else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
