"""The ProgEmu Orthanc plugin (plugin/orthanc/progemu_orthanc.py) in a real Orthanc, against a real node.

One Orthanc with the plugin and its node serve the module, plus two plugin-only Orthancs whose node
is misconfigured: one points at a port nobody listens on, one has the wrong token. Bad input must
come back as 400/404/405/502 with a one-sentence ``detail``, and must never reach the node.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath
from types import SimpleNamespace

import httpx
import pytest

from tests.support.net import free_port
from tests.support.orthanc_plugin import (
    ORTHANC_JSON,
    PLUGIN_SCRIPT,
    ROOT,
    PluginStack,
    load_orthanc_json,
    start_orthanc,
    start_stack,
    stop,
)
from tests.support.orthanc_server import USER

UNKNOWN_STUDY = "00000000-11111111-22222222-33333333-44444444"
HYPOTHESIS = "the left pleural effusion worsens"
# the plugin's own defaults in the main Orthanc (orthanc.json leaves them to the node)
DEFAULT_SEED, DEFAULT_CFG = 5, 2.5
# the header the Explorer form sends with its POST (explorer.js); the plugin refuses a POST without it
FORM = {"X-Requested-With": "progemu"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    workdir = tmp_path_factory.mktemp("orthanc-plugin")
    started: list[PluginStack] = []
    try:
        stack = start_stack(workdir / "main", DefaultSeed=DEFAULT_SEED, DefaultGuidanceScale=DEFAULT_CFG)
        started.append(stack)
        started.append(down := start_orthanc(workdir / "down", node_url=f"http://127.0.0.1:{free_port()}"))
        started.append(wrong := start_orthanc(workdir / "wrong-token", node_url=stack.node.url, token="not-the-token"))
        yield SimpleNamespace(stack=stack, down=down, wrong_token=wrong, workdir=workdir)
    finally:
        stop(*(s.orthanc for s in started), *(s.node for s in started))


@pytest.fixture(scope="module")
def stack(servers: SimpleNamespace) -> PluginStack:
    return servers.stack


@pytest.fixture(scope="module")
def untouched_study(servers: SimpleNamespace) -> tuple[str, str]:
    """A study that only ever gets bad requests: the node must never see a job for it."""
    return servers.stack.upload_prior(servers.workdir / "untouched")


def _detail(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def _node_jobs(stack: PluginStack, study_uid: str) -> list[dict]:
    response = httpx.get(stack.node.url + "/v1/counterfactuals", params={"study_instance_uid": study_uid},
                         headers=stack.node.headers, timeout=30)
    response.raise_for_status()
    return response.json()["items"]


# --- configuration -------------------------------------------------------------------------------

def test_config_file_is_valid_for_orthanc_and_compose() -> None:
    config = load_orthanc_json()
    assert config["Plugins"] == ["/usr/share/orthanc/plugins/libOrthancPython.so"]
    assert config["DicomModalities"]["PROGEMU"] == ["PROGEMU", "node", 11112]
    assert config["ProgEmu"]["NodeUrl"] == "http://node:8080"
    assert not config["ProgEmu"]["Token"], "the token comes from the environment, never from orthanc.json"
    script = PurePosixPath(config["PythonScript"])
    assert script.name == PLUGIN_SCRIPT.name
    compose = (ROOT / "docker" / "compose.yaml").read_text()
    mount = re.search(r"-\s*\.\./plugin/orthanc:(\S+):ro\b", compose)
    assert mount and mount.group(1) == str(script.parent), "compose must mount plugin/orthanc where PythonScript is"
    assert re.search(r"ORTHANC__PROG_EMU__TOKEN:\s*\$\{PROGEMU_API_TOKEN:\?", compose)


@pytest.mark.integration
def test_form_config_offers_suggestions_and_defaults_but_no_secret(stack: PluginStack) -> None:
    response = stack.request("GET", "/progemu/config")
    assert response.status_code == 200
    form = response.json()
    assert form["suggestions"] == load_orthanc_json(ORTHANC_JSON)["ProgEmu"]["Suggestions"]
    assert form["max_hypothesis_length"] == 500
    assert form["max_cfg_scale"] == 30
    assert (form["default_seed"], form["default_cfg_scale"]) == (DEFAULT_SEED, DEFAULT_CFG)
    assert stack.node.headers["Authorization"].split()[1] not in response.text
    assert stack.node.url not in response.text and "token" not in response.text.lower()


@pytest.mark.integration
def test_routes_are_behind_orthanc_authentication(stack: PluginStack) -> None:
    assert httpx.get(stack.orthanc.url + "/progemu/config", timeout=30).status_code == 401
    assert httpx.post(stack.orthanc.url + f"/progemu/studies/{UNKNOWN_STUDY}/counterfactuals",
                      json={"hypothesis": HYPOTHESIS}, timeout=30).status_code == 401


# --- the happy path ------------------------------------------------------------------------------

@pytest.mark.integration
def test_counterfactual_through_the_plugin_lands_in_the_study(stack: PluginStack, servers: SimpleNamespace) -> None:
    study_id, study_uid = stack.upload_prior(servers.workdir / "happy")
    response = stack.request("POST", f"/progemu/studies/{study_id}/counterfactuals",
                             json={"hypothesis": HYPOTHESIS, "seed": 7}, headers=FORM)
    assert response.status_code == 201, stack.diagnostics()
    created = response.json()
    assert created["study_instance_uid"] == study_uid
    # the Orthanc user who asked, under the plugin's API client where the node records both
    assert re.fullmatch(rf"(?:[^:]+:)?{re.escape(USER)}", created["requester"]), created["requester"]
    assert created["hypothesis"] == HYPOTHESIS
    # the seed as given, the guidance scale from the plugin's DefaultGuidanceScale
    assert (created["sampler"]["seed"], created["sampler"]["cfg_scale"]) == (7, DEFAULT_CFG)
    assert created["state"] in {"queued", "receiving", "running", "delivering", "done"}

    job = stack.wait_for_job(created["id"])
    assert job["state"] == "done", f"{job['reason']}\n{stack.diagnostics()}"
    assert job["results"]["interpretation"]

    series = {s["MainDicomTags"]["SeriesInstanceUID"]: s["ID"] for s in stack.orthanc.series_of(study_uid)}
    expected = {output["kind"]: output["series_instance_uid"] for output in job["results"]["outputs"]}
    assert set(expected) == {"sc", "sr", "report_page", "pdf"}
    assert set(expected.values()) <= set(series), "the SC and SR series are not in the Orthanc study"
    # one link per output, in the node's order, each with the series' Orthanc id
    assert [(entry["kind"], entry["uid"], entry["id"]) for entry in job["orthanc_series"]] == [
        (kind, uid, series[uid]) for kind, uid in expected.items()]
    modalities = {stack.orthanc.get(f"/series/{series[uid]}").json()["MainDicomTags"]["Modality"]
                  for uid in expected.values()}
    assert "SR" in modalities
    # what the request page shows: the report page's instance (Orthanc renders it) and the study's viewers
    page_uid = next(o["sop_instance_uid"] for o in job["results"]["outputs"] if o["kind"] == "report_page")
    assert stack.orthanc.get(f"/instances/{job['report_image']}").json()["MainDicomTags"]["SOPInstanceUID"] == page_uid
    preview = stack.orthanc.get(f"/instances/{job['report_image']}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert job["viewers"][0] == {"name": "Orthanc Explorer", "url": f"app/explorer.html#study?uuid={study_id}"}
    assert [viewer["name"] for viewer in job["viewers"]] == ["Orthanc Explorer", "Stone Web Viewer", "OHIF"]
    page = stack.request("GET", f"/progemu/app/studies/{study_id}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]

    listed = stack.request("GET", f"/progemu/studies/{study_id}/counterfactuals")
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["items"]] == [created["id"]]


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize(("body", "expected"), [
    pytest.param({"hypothesis": ""}, "empty", id="empty-hypothesis"),
    pytest.param({"hypothesis": " \n\t "}, "empty", id="blank-hypothesis"),
    pytest.param({"hypothesis": "x" * 501}, "the limit is 500", id="too-long"),
    pytest.param({"hypothesis": "effusion " * 60}, "the limit is 500", id="too-many-words"),
    pytest.param({"hypothesis": 42}, "must be text", id="number-hypothesis"),
    pytest.param({"hypothesis": ["the effusion worsens"]}, "must be text", id="list-hypothesis"),
    pytest.param({"hypothesis": None}, "must be text", id="null-hypothesis"),
    pytest.param({}, "must be text", id="no-hypothesis"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": "7"}, "seed", id="text-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": 1.5}, "seed", id="fractional-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": -1}, "seed", id="negative-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": True}, "seed", id="boolean-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": "2"}, "guidance scale", id="text-cfg"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": -0.5}, "guidance scale", id="negative-cfg"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": 30.5}, "guidance scale", id="cfg-above-30"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": False}, "guidance scale", id="boolean-cfg"),
    pytest.param({"hypothesis": HYPOTHESIS, "study_instance_uid": "1.2.3"}, "unexpected field", id="extra-field"),
])
def test_bad_request_bodies_are_400_and_never_reach_the_node(stack: PluginStack, untouched_study: tuple[str, str],
                                                             body: dict, expected: str) -> None:
    study_id, study_uid = untouched_study
    response = stack.request("POST", f"/progemu/studies/{study_id}/counterfactuals", json=body, headers=FORM)
    assert response.status_code == 400, response.text
    assert expected in _detail(response)
    assert _node_jobs(stack, study_uid) == []


@pytest.mark.integration
@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param(b"{not json", "must be JSON", id="not-json"),
    pytest.param(b"", "must be JSON", id="empty-body"),
    pytest.param(b"\xff\xfe", "must be JSON", id="not-utf8"),
    pytest.param(b'["the effusion worsens"]', "JSON object", id="array"),
    pytest.param(b'"the effusion worsens"', "JSON object", id="string"),
    pytest.param(b'{"hypothesis": "the effusion worsens", "cfg_scale": NaN}', "guidance scale", id="nan-cfg"),
])
def test_malformed_json_is_400(stack: PluginStack, untouched_study: tuple[str, str], raw: bytes,
                               expected: str) -> None:
    study_id, study_uid = untouched_study
    response = stack.request("POST", f"/progemu/studies/{study_id}/counterfactuals", content=raw,
                             headers={"Content-Type": "application/json", **FORM})
    assert response.status_code == 400, response.text
    assert expected in _detail(response)
    assert _node_jobs(stack, study_uid) == []


@pytest.mark.integration
@pytest.mark.parametrize(("body", "expected"), [
    # the plugin lets these through; the node refuses them (422) and the plugin relays its sentence
    pytest.param({"hypothesis": HYPOTHESIS, "seed": 2**63}, "seed must be an integer from 0 to 2**63-1",
                 id="seed-beyond-int64"),
    pytest.param({"hypothesis": "\u0007\u0007"}, "the hypothesis is empty", id="control-characters-only"),
])
def test_node_refusals_are_400_with_the_nodes_reason(stack: PluginStack, untouched_study: tuple[str, str],
                                                     body: dict, expected: str) -> None:
    study_id, study_uid = untouched_study
    response = stack.request("POST", f"/progemu/studies/{study_id}/counterfactuals", json=body, headers=FORM)
    assert response.status_code == 400, response.text
    assert _detail(response) == expected
    assert _node_jobs(stack, study_uid) == []


@pytest.mark.integration
@pytest.mark.parametrize(("kwargs", "status"), [
    # an HTML form on another site: text/plain, no custom header, the browser's Origin and the user's credentials
    pytest.param({"content": b'{"hypothesis": "the effusion worsens"}',
                  "headers": {"Content-Type": "text/plain", "Origin": "https://evil.example"}}, 403,
                 id="cross-site-form"),
    pytest.param({"content": b'{"hypothesis": "the effusion worsens"}',
                  "headers": {"Content-Type": "text/plain", "X-Requested-With": "progemu"}}, 415, id="text-plain"),
    pytest.param({"json": {"hypothesis": HYPOTHESIS}}, 403, id="json-without-the-form-header"),
    pytest.param({"json": {"hypothesis": HYPOTHESIS},
                  "headers": {"X-Requested-With": "progemu", "Origin": "https://evil.example"}}, 403,
                 id="foreign-origin"),
])
def test_a_cross_site_post_is_refused_and_never_reaches_the_node(stack: PluginStack,
                                                                untouched_study: tuple[str, str], kwargs: dict,
                                                                status: int) -> None:
    study_id, study_uid = untouched_study
    response = stack.request("POST", f"/progemu/studies/{study_id}/counterfactuals", **kwargs)
    assert response.status_code == status, response.text
    assert _detail(response)
    assert _node_jobs(stack, study_uid) == []


@pytest.mark.integration
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_study_is_404(stack: PluginStack, method: str) -> None:
    response = stack.request(method, f"/progemu/studies/{UNKNOWN_STUDY}/counterfactuals",
                             json={"hypothesis": HYPOTHESIS} if method == "POST" else None, headers=FORM)
    assert response.status_code == 404
    assert "no study" in _detail(response)


@pytest.mark.integration
def test_unknown_job_is_404(stack: PluginStack) -> None:
    response = stack.request("GET", f"/progemu/counterfactuals/{uuid.uuid4().hex}")
    assert response.status_code == 404
    assert _detail(response) == "no counterfactual request with this id"


@pytest.mark.integration
@pytest.mark.parametrize("path", [
    "/progemu/studies/not-an-orthanc-id/counterfactuals",
    f"/progemu/studies/{UNKNOWN_STUDY.upper()}/counterfactuals",
    "/progemu/counterfactuals/job.with.dots",
    "/progemu/counterfactuals/" + "a" * 65,
])
def test_malformed_ids_match_no_route(stack: PluginStack, path: str) -> None:
    assert stack.request("GET", path).status_code == 404


@pytest.mark.integration
@pytest.mark.parametrize("limit", ["0", "1001", "ten", "-1"])
def test_bad_list_limit_is_400(stack: PluginStack, untouched_study: tuple[str, str], limit: str) -> None:
    response = stack.request("GET", f"/progemu/studies/{untouched_study[0]}/counterfactuals", params={"limit": limit})
    assert response.status_code == 400
    assert "limit" in _detail(response)


@pytest.mark.integration
@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/progemu/studies/{study}/counterfactuals", "GET,POST"),
    ("DELETE", "/progemu/studies/{study}/counterfactuals", "GET,POST"),
    ("POST", "/progemu/counterfactuals/{job}", "GET"),
    ("DELETE", "/progemu/counterfactuals/{job}", "GET"),
    ("PUT", "/progemu/config", "GET"),
    ("POST", "/progemu/config", "GET"),
    ("POST", "/progemu/app/studies/{study}", "GET"),
    ("PUT", "/progemu/app/page.js", "GET"),
])
def test_other_methods_are_405(stack: PluginStack, untouched_study: tuple[str, str], method: str, path: str,
                               allowed: str) -> None:
    response = stack.request(method, path.format(study=untouched_study[0], job=uuid.uuid4().hex), content=b"{}")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(",")) == set(allowed.split(","))
    assert _node_jobs(stack, untouched_study[1]) == []


# --- the node unreachable or misconfigured ---------------------------------------------------------

@pytest.fixture(scope="module")
def down_study(servers: SimpleNamespace) -> str:
    return servers.down.upload_prior(servers.workdir / "down-prior")[0]


@pytest.mark.integration
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/progemu/studies/{study}/counterfactuals"),
    ("GET", "/progemu/studies/{study}/counterfactuals"),
    ("GET", "/progemu/counterfactuals/{job}"),
])
def test_node_down_is_502_with_a_clear_message(servers: SimpleNamespace, down_study: str, method: str,
                                               path: str) -> None:
    down: PluginStack = servers.down
    node_url = down.orthanc.config["ProgEmu"]["NodeUrl"]
    response = down.request(method, path.format(study=down_study, job=uuid.uuid4().hex),
                            json={"hypothesis": HYPOTHESIS} if method == "POST" else None, headers=FORM)
    assert response.status_code == 502
    assert _detail(response) == f"the ProgEmu node at {node_url} is not reachable (connection refused)"


@pytest.mark.integration
def test_wrong_token_is_502_naming_the_setting(servers: SimpleNamespace) -> None:
    wrong: PluginStack = servers.wrong_token
    study_id, _ = wrong.upload_prior(servers.workdir / "wrong-token-prior")
    response = wrong.request("POST", f"/progemu/studies/{study_id}/counterfactuals", json={"hypothesis": HYPOTHESIS},
                             headers=FORM)
    assert response.status_code == 502
    assert "refused the plugin's token (check ProgEmu.Token)" in _detail(response)
