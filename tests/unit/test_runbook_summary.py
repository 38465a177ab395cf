"""The summary every runbook opens on: the verdict, where and when, the next command, and the
effective parameters with secrets and the allow-list masked."""
from __future__ import annotations

from registry_mirror.parameters import load_params_file
from registry_mirror.readable import human_bytes, percent, summary_table
from registry_mirror.runbook_summary import open_summary


def test_the_summary_masks_secrets_and_ranges_and_names_the_next_command() -> None:
    settings = load_params_file("params/local.yaml")
    summary = open_summary("incident_triage.ipynb", settings, {"dry_run": False, "remedy": ""})
    shown = repr(summary) + summary._repr_html_()
    assert "RUNNING" in shown and "papermill --help-notebook notebooks/incident_triage.ipynb" in shown
    assert "local-hub-only-password" not in shown and "127.0.0.10/32" not in shown
    assert summary.parameters["upstream.password"] == "*** (set)"
    assert summary.parameters["proxy.security_rules"].endswith("(hidden)")
    summary.conclude("BROKEN LAYER: S3. CAUSE: the S3 API does not answer. Remedy: redeploy.")
    assert summary.ok is False and "-p apply_remedy True" in summary.next_step
    assert "-f params/local.yaml" in summary.next_step
    assert repr(summary).startswith("BROKEN LAYER: S3.")
    summary.conclude("HEALTHY: every layer answers.")
    assert summary.ok is True and "&#10004; HEALTHY" in summary._repr_html_()


def test_numbers_read_as_an_operator_reads_them() -> None:
    import pandas as pd

    assert (human_bytes(999), human_bytes(1_234_567), human_bytes(5e12)) == ("999 bytes", "1.2 MB", "5.0 TB")
    assert (percent(11915 / 11918), percent(1.0), percent(0.5), percent(0.0001)) == (">99.9%", "100%", "50%", "<0.1%")
    table = summary_table(pd.Series({"requests": 11918.0, "bytes_served": 1.5e10, "saved_ratio": 0.25}),
                          sizes=["bytes_served"], ratios=["saved_ratio"])
    assert list(table["value"]) == ["11,918", "15.0 GB", "25%"]
