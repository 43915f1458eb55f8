"""`provisioner verify`: a pass/fail table of the seed's promises, a JSON or JUnit report, exit 1 on any failure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from provisioner import spec
from provisioner.cli.render import SpecOption, cli_bus, fail_cleanly, out, spec_path
from provisioner.errors import VerifyError
from provisioner.state import State
from provisioner.verify import check_ids, run
from provisioner.verify.report import FAILED, PASSED, VerifyReport

app = typer.Typer(
    help="Prove the cluster's promises: host checks (testinfra) and behaviour through the API.",
    pretty_exceptions_show_locals=False,
)

RESULT_STYLE = {PASSED: "green", FAILED: "bold red"}


def table(report: VerifyReport) -> Table:
    t = Table(title=f"provisioner verify: {report.cluster}", title_justify="left", show_lines=False)
    t.add_column("check", no_wrap=True)
    t.add_column("expectation")
    t.add_column("result")
    t.add_column("duration", justify="right")
    for r, (check, expectation, result, duration) in zip(report.results, report.rows(), strict=True):
        style = RESULT_STYLE.get(r.result, "dim")
        t.add_row(check, expectation, f"[{style}]{result}[/{style}]", duration)
    return t


@app.callback(invoke_without_command=True)
def verify(
    spec_file: SpecOption = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            metavar="CHECK",
            help="Run only this check (repeatable; patterns like 'kill-*'; groups: hosts, cluster, self-healing, "
            f"etcd). Checks: {', '.join(check_ids())}.",
        ),
    ] = None,
    report_file: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the report here: JUnit XML if the name ends in .xml, else JSON."),
    ] = None,
) -> None:
    """Run every check (or --only some), print the table, exit 1 when any check failed."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        report = run(cluster, State.for_cluster(cluster.name), bus, select=only)
        out.print(table(report))
        if report_file is not None:
            report.files.append(str(report.write(report_file)))
        counts = report.counts()
        out.print(
            f"{counts[PASSED]} passed, {counts[FAILED]} failed, {counts['skipped']} skipped; "
            f"report: {', '.join(report.files)}"
        )
        if not report.ok:
            raise VerifyError(
                f"cluster {cluster.name}",
                f"{counts[FAILED]} check(s) failed: {', '.join(r.check for r in report.failed)}",
                "read the result column above; re-run one check with --only NAME",
            )
