"""What CI reads from a `tracelab check` Verdict: JUnit XML and GitHub Actions output.

Both are renderings of the same `tracelab.replay.check.Verdict` the printed lines and the exit
status come from, so they can never disagree with it.

- JUnit XML (ElementTree): `<testsuites>` with one `<testsuite>` per spec file and one
  `<testcase>` per case (`classname` the spec file, `file`/`line` where the case is); each
  failed expectation is one `<failure type="<expectation>" message="...">` whose text is the
  evidence (the differing calls, the budget and the value); a case that could not be judged is
  an `<error>`, and so is an invalid spec file (one testcase named after the file).
- GitHub Actions (when GITHUB_ACTIONS=true): one `::error file=…,line=…,title=…::…` workflow
  command per failed expectation or error, and a Markdown table of the cases appended to the
  file named by GITHUB_STEP_SUMMARY.
"""
from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracelab.replay.check import CaseResult, Verdict


def _relative(path: Path) -> str:
    base = Path(os.environ.get("GITHUB_WORKSPACE") or Path.cwd()).resolve()
    try:
        return str(path.resolve().relative_to(base))
    except ValueError:
        return str(path)


def junit_xml(verdict: Verdict) -> ET.ElementTree:
    """The verdict as a JUnit XML tree (write it with `.write(path, encoding="utf-8")`)."""
    root = ET.Element("testsuites", name="tracelab check")
    suites: dict[str, ET.Element] = {}

    def suite(path: Path) -> ET.Element:
        key = _relative(path)
        if key not in suites:
            suites[key] = ET.SubElement(root, "testsuite", name=key)
        return suites[key]

    for path, errors in verdict.spec_errors:
        case = ET.SubElement(suite(path), "testcase", name=_relative(path),
                             classname=_relative(path), time="0")
        error = ET.SubElement(case, "error", type="invalid spec",
                              message=f"{len(errors)} problems in {_relative(path)}")
        error.text = "\n".join(errors)
    for result in verdict.results:
        _testcase(suite(result.case.spec), result)
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    for element in suites.values():
        cases = element.findall("testcase")
        counts = {"tests": len(cases),
                  "failures": sum(1 for c in cases if c.find("failure") is not None),
                  "errors": sum(1 for c in cases if c.find("error") is not None),
                  "time": sum(float(c.get("time") or 0) for c in cases)}
        for key, value in counts.items():
            element.set(key, f"{value:.3f}" if key == "time" else str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, f"{value:.3f}" if key == "time" else str(int(value)))
    ET.indent(root)
    return ET.ElementTree(root)


def _testcase(parent: ET.Element, result: CaseResult) -> None:
    case = ET.SubElement(parent, "testcase", name=result.case.name,
                         classname=_relative(result.case.spec),
                         file=_relative(result.case.spec), line=str(result.case.line),
                         time=f"{result.duration_s:.3f}")
    if result.error is not None:
        error = ET.SubElement(case, "error", type="invalid", message=result.error)
        error.text = result.error
    for failure in result.failures:
        element = ET.SubElement(case, "failure", type=failure.expectation,
                                message=f"{failure.expectation}: {failure.message}")
        element.text = failure.text()
    out = "\n".join(filter(None, [result.summary, result.note]))
    if out:
        ET.SubElement(case, "system-out").text = out


def write_junit(verdict: Verdict, path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    junit_xml(verdict).write(target, encoding="utf-8", xml_declaration=True)


# -- GitHub Actions ---------------------------------------------------------------------------

def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(file: Path, line: int, title: str, message: str) -> str:
    props = f"file={_escape_property(_relative(file))},line={line}," \
            f"title={_escape_property(title)}"
    return f"::error {props}::{_escape_data(message)}"


def annotations(verdict: Verdict) -> list[str]:
    """One `::error` workflow command per invalid spec, unjudged case and failed expectation."""
    out = [_command(path, 1, "tracelab check: invalid spec", "\n".join(errors))
           for path, errors in verdict.spec_errors]
    for r in verdict.results:
        if r.error is not None:
            out.append(_command(r.case.spec, r.case.line, f"{r.case.name}: invalid", r.error))
        for failure in r.failures:
            out.append(_command(r.case.spec, r.case.line,
                                f"{r.case.name}: {failure.expectation}", failure.text()))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def step_summary(verdict: Verdict) -> str:
    """A Markdown table of the cases (and invalid specs) for $GITHUB_STEP_SUMMARY."""
    icon = {"pass": "✅ pass", "fail": "❌ fail", "error": "⚠️ error"}
    rows = ["### tracelab check", "", verdict.headline, "",
            "| Case | Spec | Result | Details |", "| --- | --- | --- | --- |"]
    for path, errors in verdict.spec_errors:
        rows.append(f"| {_cell(_relative(path))} | {_cell(_relative(path))} | ⚠️ invalid | "
                    f"{_cell(chr(10).join(errors))} |")
    for r in verdict.results:
        details = r.error if r.error is not None else \
            "\n".join(f"{f.expectation}: {f.message}" for f in r.failures)
        rows.append(f"| {_cell(r.case.name)} | {_cell(_relative(r.case.spec))}:{r.case.line} | "
                    f"{icon[r.status]} | {_cell(details or r.summary)} |")
    return "\n".join(rows) + "\n\n"


def github_output(verdict: Verdict) -> list[str]:
    """When GITHUB_ACTIONS=true: append the summary table and return the annotations."""
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return []
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(step_summary(verdict))
        except OSError as exc:  # the verdict stands; only the summary is lost
            print(f"tracelab check: cannot append to GITHUB_STEP_SUMMARY {summary}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
    return annotations(verdict)
