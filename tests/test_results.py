"""The job results contract: typed, allow-listed for callers, and readable from 0.1 job stores."""

from __future__ import annotations

from plugin.results import JobResults, OutputKind, PublicResults


def test_results_of_a_0_1_job_store_are_read_into_the_contract() -> None:
    stored = {"files": {"sc": "/r/counterfactual.dcm", "sr": "/r/report.dcm", "fhir": "/r/fhir.json"},
              "dicom": ["sc", "sr"], "sc": {"series_instance_uid": "1.2.1", "sop_instance_uid": "1.2.1.1"},
              "sr": {"series_instance_uid": "1.2.2", "sop_instance_uid": "1.2.2.1"}, "interpretation": "Worse.",
              "algorithm": {"name": "ProgEmu", "version": "v", "checkpoint_sha256": "ab"}, "settings": {"seed": "1"}}
    results = JobResults.from_stored(stored)
    assert [(o.kind, o.sop_instance_uid) for o in results.outputs] == [(OutputKind.SC, "1.2.1.1"),
                                                                        (OutputKind.SR, "1.2.2.1")]
    assert [p.name for p in results.dicom_files()] == ["counterfactual.dcm", "report.dcm"]
    assert results.output_series == ["1.2.1", "1.2.2"]


def test_callers_see_only_the_allow_listed_fields() -> None:
    assert set(PublicResults.model_fields) == {"outputs", "interpretation", "algorithm", "settings", "checks"}
    assert set(JobResults.model_fields) - set(PublicResults.model_fields) == {"files"}
