"""The Orthanc plugin's logic (plugin/orthanc/progemu_orthanc.py) without Orthanc: a stand-in ``orthanc`` module.

The plugin is imported from its file, as Orthanc imports it, and its routes are called as Orthanc calls
them: ``callback(output, uri, method=..., groups=..., get=..., headers=..., body=...)``, the header names
lower-cased. The node is a stand-in for the plugin's opener, or a closed port. tests/test_orthanc_plugin.py
runs the same routes in a real Orthanc.
"""

from __future__ import annotations

import base64
import email.message
import http.client
import importlib.util
import io
import json
import re
import sys
import types
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.net import free_port
from tests.support.orthanc_plugin import PLUGIN_SCRIPT

NODE_URL = "http://node.test:8080"
TOKEN = "node-token-123"
STUDY_ID = "0a1b2c3d-11111111-22222222-33333333-44444444"
UNKNOWN_STUDY = "00000000-11111111-22222222-33333333-44444444"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
JOB_ID = "job-1"
HYPOTHESIS = "the left pleural effusion worsens"
USER = "dr.lee"
ORTHANC_HOST = "pacs.example:8042"


def basic(user: str, password: str = "pw") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# what Orthanc passes for the Explorer form's POST (orthanc-python lower-cases the names)
FORM_HEADERS = {"host": ORTHANC_HOST, "origin": f"http://{ORTHANC_HOST}", "content-type": "application/json",
                "x-requested-with": "progemu", "authorization": basic(USER)}
SC_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.34"
OUTPUTS = [
    {"kind": "sc", "series_instance_uid": "1.2.3.1", "sop_instance_uid": "1.2.3.1.1", "sop_class_uid": SC_CLASS},
    {"kind": "sr", "series_instance_uid": "1.2.3.2", "sop_instance_uid": "1.2.3.2.1", "sop_class_uid": SR_CLASS},
    {"kind": "report_page", "series_instance_uid": "1.2.3.3", "sop_instance_uid": "1.2.3.3.1",
     "sop_class_uid": SC_CLASS},
]
RESULTS = {"outputs": OUTPUTS, "interpretation": "The effusion is larger.",
           "algorithm": {"name": "ProgEmu", "version": "0.2", "checkpoint_sha256": "ab" * 32},
           "settings": {"seed": "7", "cfg_scale": "2.5"}}


class FakeOrthanc:
    """What the plugin uses of orthanc-python's ``orthanc`` module, over one study and some of its series."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {"ProgEmu": {"NodeUrl": NODE_URL, "Token": TOKEN},
                                       "AuthenticationEnabled": True, "RegisteredUsers": {USER: "pw"}}
        self.series: dict[str, str] = {}  # SeriesInstanceUID -> Orthanc id
        self.instances: dict[str, str] = {}  # SOPInstanceUID -> Orthanc id
        self.routes: dict[str, Callable] = {}
        self.explorer: list[str] = []
        self.logs: list[tuple[str, str]] = []
        module = types.ModuleType("orthanc")
        module.OrthancException = type("OrthancException", (Exception,), {})
        module.GetConfiguration = lambda: json.dumps(self.config)
        module.RestApiGet = self._get
        module.RestApiPost = self._post
        module.RegisterRestCallback = self.routes.__setitem__
        module.ExtendOrthancExplorer = self.explorer.append
        for level in ("Info", "Warning", "Error"):
            setattr(module, f"Log{level}", lambda message, level=level: self.logs.append((level, message)))
        self.module = module

    def _get(self, uri: str) -> str:
        if uri != f"/studies/{STUDY_ID}":
            raise self.module.OrthancException("Unknown resource")
        return json.dumps({"ID": STUDY_ID, "MainDicomTags": {"StudyInstanceUID": STUDY_UID}})

    def _post(self, uri: str, body: str) -> str:
        assert uri == "/tools/lookup"
        return json.dumps([{"ID": self.series[body], "Type": "Series"}] if body in self.series else
                          [{"ID": self.instances[body], "Type": "Instance"}] if body in self.instances else
                          [{"ID": STUDY_ID, "Type": "Study"}] if body == STUDY_UID else [])

    def warnings(self) -> str:
        return "\n".join(message for level, message in self.logs if level == "Warning")


class FakeOutput:
    """orthanc-python's ``output``: what the route answered."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = ""
        self.headers: dict[str, str] = {}
        self.allowed: str | None = None

    def AnswerBuffer(self, body: str, mime: str) -> None:
        self.status, self.body, self.headers["Content-Type"] = 200, body, mime

    def SetHttpHeader(self, name: str, value: str) -> None:
        self.headers[name] = value

    def SendHttpStatus(self, status: int, body: str, size: int) -> None:
        assert isinstance(body, str) and size == len(body.encode())
        self.status, self.body = status, body

    def SendHttpStatusCode(self, status: int) -> None:
        self.status = status

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.status, self.allowed = 405, allowed

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json"
        return json.loads(self.body)


class FakeNode:
    """The node's API as the plugin's opener meets it: an answer (status, JSON or bytes, or an exception) per
    method and path, and every request kept."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Any] = {}
        self.requests: list[urllib.request.Request] = []

    def open(self, request: urllib.request.Request, timeout: float) -> io.BytesIO:
        self.requests.append(request)
        answer = self.answers[request.get_method(), request.full_url.removeprefix(NODE_URL).split("?")[0]]
        if isinstance(answer, BaseException):
            raise answer
        status, payload, *extra = answer
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if status >= 400:
            headers = email.message.Message()
            for name, value in (extra[0] if extra else {}).items():
                headers[name] = value
            raise urllib.error.HTTPError(request.full_url, status, "error", headers, io.BytesIO(body))
        response = io.BytesIO(body)
        response.status = status
        return response

    def sent(self) -> dict:
        return json.loads(self.requests[-1].data)


@pytest.fixture
def orthanc() -> FakeOrthanc:
    return FakeOrthanc()


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch, orthanc: FakeOrthanc) -> Callable[[], types.ModuleType]:
    """Import a fresh copy of the plugin from its file, as Orthanc does (module name = file name)."""
    def load() -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "orthanc", orthanc.module)
        spec = importlib.util.spec_from_file_location(PLUGIN_SCRIPT.stem, PLUGIN_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def plugin(load: Callable[[], types.ModuleType], node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The plugin as Orthanc runs it: registered, its node the stand-in."""
    module = load()
    module.register()
    monkeypatch.setattr(module, "OPENER", node)
    return module


def call(orthanc: FakeOrthanc, method: str, uri: str, *, body: bytes | dict | None = None,
         get: dict | None = None, headers: dict[str, str] | None = None) -> FakeOutput:
    """Route ``uri`` as Orthanc does: the first registered pattern that matches it whole, its groups passed on.
    The headers are the Explorer form's unless given."""
    output = FakeOutput()
    for pattern, callback in orthanc.routes.items():
        if match := re.fullmatch(pattern, uri):
            raw = json.dumps(body).encode() if isinstance(body, dict) else body
            callback(output, uri, method=method, groups=list(match.groups()), get=get or {},
                     headers=FORM_HEADERS if headers is None else headers, body=raw or b"")
            return output
    raise AssertionError(f"no route for {uri}")


# --- loading and registration ---------------------------------------------------------------------

def test_import_registers_nothing_and_reads_no_configuration(load: Callable, orthanc: FakeOrthanc) -> None:
    orthanc.module.GetConfiguration = lambda: pytest.fail("the configuration was read at import")
    module = load()
    assert orthanc.routes == {} and orthanc.explorer == []
    assert module.SETTINGS == module.Settings()


def test_register_reads_settings_and_adds_the_routes_and_the_form(load: Callable, orthanc: FakeOrthanc) -> None:
    orthanc.config["ProgEmu"]["Timeout"] = 5
    module = load()
    module.register()
    assert module.SETTINGS.node_url == NODE_URL and module.SETTINGS.timeout == 5.0
    assert set(orthanc.routes.values()) == {module.study_counterfactuals, module.counterfactual, module.form_config,
                                            module.request_page, module.app_file}
    assert orthanc.explorer == [(PLUGIN_SCRIPT.parent / "explorer.js").read_text(encoding="utf-8")]
    assert module.ASSETS["page.js"].body == (PLUGIN_SCRIPT.parent / "app" / "page.js").read_text(encoding="utf-8")
    assert f"plugin ready; node at {NODE_URL}" in orthanc.warnings()
    assert TOKEN not in "\n".join(message for _, message in orthanc.logs)


def test_orthanc_import_registers(load: Callable, orthanc: FakeOrthanc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside Orthanc, ``orthanc`` is a built-in module: importing the script is the plugin's start."""
    monkeypatch.setattr(sys, "builtin_module_names", (*sys.builtin_module_names, "orthanc"))
    load()
    assert len(orthanc.routes) == 5 and len(orthanc.explorer) == 1


# --- settings -------------------------------------------------------------------------------------

def test_empty_section_gives_the_defaults(load: Callable) -> None:
    module = load()
    assert module.load_settings({}) == module.Settings()
    assert module.Settings().suggestions == module.DEFAULT_SUGGESTIONS


def test_settings_are_read_and_normalised(load: Callable) -> None:
    module = load()
    settings = module.load_settings({"ProgEmu": {
        "NodeUrl": "https://node:8443/", "Token": 12345, "Timeout": 60, "DefaultSeed": 3, "DefaultGuidanceScale": 2,
        "MaxHypothesisLength": 200, "Suggestions": ["  the effusion worsens "],
        "Viewers": [{"Name": "OHIF", "Url": " https://ohif.test/viewer?StudyInstanceUIDs={StudyInstanceUID} "}]}})
    assert settings == module.Settings(node_url="https://node:8443", token="12345", timeout=60.0, default_seed=3,
                                       default_cfg_scale=2.0, max_length=200, suggestions=("the effusion worsens",),
                                       viewers=(("OHIF", "https://ohif.test/viewer?StudyInstanceUIDs={StudyInstanceUID}"),))
    assert isinstance(settings.timeout, float) and isinstance(settings.default_cfg_scale, float)


def test_settings_merge_case_variants_of_the_section(load: Callable) -> None:
    """ORTHANC__PROGEMU__TOKEN becomes ``Progemu.Token`` in the orthancteam image, next to orthanc.json's ProgEmu."""
    module = load()
    settings = module.load_settings({"ProgEmu": {"NodeUrl": NODE_URL, "Token": ""}, "Progemu": {"Token": "t"}})
    assert (settings.node_url, settings.token) == (NODE_URL, "t")


@pytest.mark.parametrize(("key", "value", "field"), [
    pytest.param("NodeUrl", 8080, "node_url", id="url-number"),
    pytest.param("NodeUrl", "node:8080", "node_url", id="url-without-scheme"),
    pytest.param("Token", ["secret-in-a-list"], "token", id="token-list"),
    pytest.param("Token", True, "token", id="token-boolean"),
    pytest.param("Timeout", "thirty", "timeout", id="timeout-text"),
    pytest.param("Timeout", 0.5, "timeout", id="timeout-below-1"),
    pytest.param("Timeout", True, "timeout", id="timeout-boolean"),
    pytest.param("DefaultSeed", 1.5, "default_seed", id="seed-fraction"),
    pytest.param("DefaultSeed", -1, "default_seed", id="seed-negative"),
    pytest.param("DefaultSeed", "7", "default_seed", id="seed-text"),
    pytest.param("DefaultSeed", True, "default_seed", id="seed-boolean"),
    pytest.param("DefaultGuidanceScale", 31, "default_cfg_scale", id="cfg-above-30"),
    pytest.param("DefaultGuidanceScale", {"x": 1}, "default_cfg_scale", id="cfg-object"),
    pytest.param("MaxHypothesisLength", 0, "max_length", id="max-length-0"),
    pytest.param("MaxHypothesisLength", "500", "max_length", id="max-length-text"),
    pytest.param("Suggestions", "the effusion worsens", "suggestions", id="suggestions-text"),
    pytest.param("Suggestions", ["ok", ""], "suggestions", id="suggestions-with-empty"),
    pytest.param("Suggestions", ["ok", 3], "suggestions", id="suggestions-with-number"),
    pytest.param("Viewers", {"OHIF": "ohif/viewer"}, "viewers", id="viewers-object"),
    pytest.param("Viewers", ["app/explorer.html"], "viewers", id="viewers-list-of-text"),
    pytest.param("Viewers", [{"Name": "OHIF", "Url": ""}], "viewers", id="viewers-empty-template"),
    pytest.param("Viewers", [{"Name": "OHIF"}], "viewers", id="viewers-without-url"),
])
def test_a_bad_setting_falls_back_to_its_default_with_a_warning(load: Callable, orthanc: FakeOrthanc, key: str,
                                                                value: Any, field: str) -> None:
    module = load()
    settings = module.load_settings({"ProgEmu": {key: value}})
    assert getattr(settings, field) == getattr(module.Settings(), field)
    warnings = orthanc.warnings()
    assert f"ignoring ProgEmu.{key}" in warnings
    assert "secret-in-a-list" not in warnings, "a bad value is never logged: it may be the token"


# --- the request body -----------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param(b"{not json", "must be JSON", id="not-json"),
    pytest.param(b"", "must be JSON", id="empty-body"),
    pytest.param(b"\xff\xfe", "must be JSON", id="not-utf8"),
    pytest.param(b'["the effusion worsens"]', "must be a JSON object", id="array"),
    pytest.param(b'"the effusion worsens"', "must be a JSON object", id="string"),
    pytest.param(b'{"hypothesis": "x", "study_instance_uid": "1.2"}', "unexpected field 'study_instance_uid'",
                 id="extra-field"),
])
def test_json_body_refuses_what_is_not_a_request(load: Callable, raw: bytes, expected: str) -> None:
    module = load()
    with pytest.raises(module.Problem) as caught:
        module._json_body({"body": raw})
    assert caught.value.status == 400 and expected in caught.value.detail


def test_json_body_size_limit(load: Callable) -> None:
    module = load()
    padding = module.MAX_BODY_BYTES - len(b'{"hypothesis": ""}')
    assert module._json_body({"body": b'{"hypothesis": "' + b"x" * padding + b'"}'})["hypothesis"] == "x" * padding
    with pytest.raises(module.Problem, match="too large"):
        module._json_body({"body": b'{"hypothesis": "' + b"x" * (padding + 1) + b'"}'})


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param({"hypothesis": ""}, "empty", id="empty"),
    pytest.param({"hypothesis": " \n\t "}, "empty", id="blank"),
    pytest.param({"hypothesis": "x" * 501}, "the hypothesis has 501 characters; the limit is 500", id="too-long"),
    pytest.param({"hypothesis": "effusion " * 60}, "the limit is 500", id="too-many-words"),
    pytest.param({"hypothesis": 42}, "must be text", id="number"),
    pytest.param({"hypothesis": None}, "must be text", id="null"),
    pytest.param({}, "must be text", id="missing"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": "7"}, "seed", id="text-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": 1.5}, "seed", id="fractional-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": -1}, "seed", id="negative-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": True}, "seed", id="boolean-seed"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": "2"}, "guidance scale", id="text-cfg"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": -0.5}, "guidance scale", id="negative-cfg"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": 30.5}, "from 0 to 30", id="cfg-above-30"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": float("nan")}, "guidance scale", id="nan-cfg"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": float("inf")}, "guidance scale", id="infinite-cfg"),
    pytest.param({"hypothesis": HYPOTHESIS, "cfg_scale": False}, "guidance scale", id="boolean-cfg"),
])
def test_validate_refuses(load: Callable, body: dict, expected: str) -> None:
    module = load()
    with pytest.raises(module.Problem) as caught:
        module.validate(body)
    assert caught.value.status == 400 and expected in caught.value.detail


@pytest.mark.parametrize(("body", "defaults", "expected"), [
    pytest.param({"hypothesis": f"  {HYPOTHESIS}\n"}, {}, {"hypothesis": HYPOTHESIS}, id="stripped"),
    pytest.param({"hypothesis": "x" * 500}, {}, {"hypothesis": "x" * 500}, id="at-the-limit"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": 0, "cfg_scale": 30}, {},
                 {"hypothesis": HYPOTHESIS, "seed": 0, "cfg_scale": 30.0}, id="bounds"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": 2**63}, {}, {"hypothesis": HYPOTHESIS, "seed": 2**63},
                 id="huge-seed-left-to-the-node"),
    pytest.param({"hypothesis": HYPOTHESIS}, {"default_seed": 5, "default_cfg_scale": 2.5},
                 {"hypothesis": HYPOTHESIS, "seed": 5, "cfg_scale": 2.5}, id="configured-defaults"),
    pytest.param({"hypothesis": HYPOTHESIS, "seed": 9, "cfg_scale": 1}, {"default_seed": 5, "default_cfg_scale": 2.5},
                 {"hypothesis": HYPOTHESIS, "seed": 9, "cfg_scale": 1.0}, id="given-beats-default"),
])
def test_validate_passes(load: Callable, monkeypatch: pytest.MonkeyPatch, body: dict, defaults: dict,
                         expected: dict) -> None:
    module = load()
    monkeypatch.setattr(module, "SETTINGS", module.Settings(**defaults))
    assert module.validate(body) == expected


# --- the routes -----------------------------------------------------------------------------------

def test_post_sends_the_checked_request_with_the_token(plugin: types.ModuleType, orthanc: FakeOrthanc,
                                                       node: FakeNode) -> None:
    node.answers["POST", "/v1/counterfactuals"] = (201, {"id": JOB_ID, "state": "queued", "results": None})
    answer = call(orthanc, "POST", f"/progemu/studies/{STUDY_ID}/counterfactuals",
                  body={"hypothesis": f" {HYPOTHESIS} ", "seed": 7})
    assert answer.status == 201 and answer.json()["id"] == JOB_ID
    assert node.sent() == {"hypothesis": HYPOTHESIS, "seed": 7, "study_instance_uid": STUDY_UID,
                           "requester": USER}
    assert node.requests[-1].get_header("Authorization") == f"Bearer {TOKEN}"


def test_bad_body_is_400_and_never_reaches_the_node(plugin: types.ModuleType, orthanc: FakeOrthanc,
                                                    node: FakeNode) -> None:
    answer = call(orthanc, "POST", f"/progemu/studies/{STUDY_ID}/counterfactuals", body={"hypothesis": ""})
    assert answer.status == 400 and "empty" in answer.json()["detail"]
    assert node.requests == []


def test_list_passes_the_study_and_checks_the_limit(plugin: types.ModuleType, orthanc: FakeOrthanc,
                                                    node: FakeNode) -> None:
    node.answers["GET", "/v1/counterfactuals"] = (200, {"items": []})
    assert call(orthanc, "GET", f"/progemu/studies/{STUDY_ID}/counterfactuals", get={"limit": "10"}).json() == {
        "items": []}
    assert node.requests[-1].full_url == f"{NODE_URL}/v1/counterfactuals?study_instance_uid={STUDY_UID}&limit=10"
    for limit in ("0", "1001", "ten", "-1"):
        answer = call(orthanc, "GET", f"/progemu/studies/{STUDY_ID}/counterfactuals", get={"limit": limit})
        assert answer.status == 400 and "limit" in answer.json()["detail"]
    assert len(node.requests) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_study_is_404(plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode, method: str) -> None:
    answer = call(orthanc, method, f"/progemu/studies/{UNKNOWN_STUDY}/counterfactuals", body={"hypothesis": "x"})
    assert answer.status == 404 and answer.json() == {"detail": "Orthanc holds no study with this id"}
    assert node.requests == []


@pytest.mark.parametrize(("method", "uri", "allowed"), [
    ("PUT", f"/progemu/studies/{STUDY_ID}/counterfactuals", "GET,POST"),
    ("DELETE", f"/progemu/counterfactuals/{JOB_ID}", "GET"),
    ("POST", "/progemu/config", "GET"),
])
def test_other_methods_are_405(plugin: types.ModuleType, orthanc: FakeOrthanc, method: str, uri: str,
                               allowed: str) -> None:
    answer = call(orthanc, method, uri, body=b"{}")
    assert (answer.status, answer.allowed) == (405, allowed)


def test_form_config_has_no_secret(load: Callable, orthanc: FakeOrthanc) -> None:
    orthanc.config["ProgEmu"].update(DefaultSeed=5, Suggestions=["the effusion worsens"])
    load().register()
    answer = call(orthanc, "GET", "/progemu/config")
    assert answer.json() == {"suggestions": ["the effusion worsens"], "max_hypothesis_length": 500,
                             "default_seed": 5, "default_cfg_scale": None, "max_cfg_scale": 30.0,
                             "notice": "Synthetic images, not for diagnosis"}
    assert TOKEN not in answer.body and NODE_URL not in answer.body


def test_a_failure_of_the_plugin_itself_is_502_with_its_kind(plugin: types.ModuleType, orthanc: FakeOrthanc) -> None:
    def broken(uri: str) -> str:
        raise RuntimeError("patient name in here")

    orthanc.module.RestApiGet = broken
    answer = call(orthanc, "GET", f"/progemu/studies/{STUDY_ID}/counterfactuals")
    assert answer.status == 502 and answer.json() == {"detail": "the ProgEmu plugin failed (RuntimeError)"}
    assert "patient name" not in orthanc.warnings()


def test_status_alone_when_orthanc_refuses_a_body(plugin: types.ModuleType, orthanc: FakeOrthanc,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: FakeOutput, status: int, body: str, size: int) -> None:
        raise TypeError("bytes expected")

    monkeypatch.setattr(FakeOutput, "SendHttpStatus", refuse)
    answer = call(orthanc, "POST", f"/progemu/studies/{STUDY_ID}/counterfactuals", body=b"{")
    assert (answer.status, answer.body) == (400, "")
    assert "could not send an answer body (TypeError)" in orthanc.warnings()


# --- cross-site requests and the requester -------------------------------------------------------

FORM_POST = f"/progemu/studies/{STUDY_ID}/counterfactuals"


def _without(*names: str, **changes: str) -> dict[str, str]:
    return {**{k: v for k, v in FORM_HEADERS.items() if k not in names}, **changes}


@pytest.mark.parametrize(("headers", "status", "detail"), [
    # what an HTML form on another site sends with the radiologist's Basic credentials
    pytest.param(_without("x-requested-with", origin="https://evil.example", **{"content-type": "text/plain"}),
                 403, "cross-site request refused", id="cross-site-text-plain-form"),
    pytest.param(_without("x-requested-with", "origin", **{"content-type": "text/plain"}), 415, "application/json",
                 id="text-plain-without-origin"),
    pytest.param(_without("origin", **{"content-type": "text/plain"}), 415, "application/json",
                 id="text-plain-with-the-header"),
    pytest.param(_without("origin", **{"content-type": "application/x-www-form-urlencoded"}), 415,
                 "application/json", id="urlencoded-form"),
    pytest.param(_without("origin", **{"content-type": "multipart/form-data; boundary=x"}), 415, "application/json",
                 id="multipart-form"),
    pytest.param(_without("content-type"), 415, "application/json", id="no-content-type"),
    pytest.param(_without("x-requested-with"), 403, "X-Requested-With: progemu", id="json-without-the-header"),
    pytest.param(_without(**{"x-requested-with": "XMLHttpRequest"}), 403, "X-Requested-With: progemu",
                 id="another-header-value"),
    pytest.param(_without(origin="https://evil.example"), 403, "cross-site", id="foreign-origin-with-all-else"),
    pytest.param(_without(origin="null"), 403, "cross-site", id="opaque-origin"),
    pytest.param(_without(origin="http://other.pacs.example:8042"), 403, "cross-site", id="sibling-host"),
    pytest.param(_without(origin="http://pacs.example:9999"), 403, "cross-site", id="other-port"),
    pytest.param(_without(origin="https://pacs.example"), 403, "cross-site", id="other-scheme-default-port"),
    pytest.param(_without("host"), 403, "cross-site", id="origin-but-no-host"),
    pytest.param(_without("origin", **{"sec-fetch-site": "cross-site"}), 403, "cross-site",
                 id="fetch-metadata-cross-site"),
    pytest.param(_without(**{"sec-fetch-site": "same-site"}), 403, "cross-site", id="fetch-metadata-same-site"),
])
def test_a_post_that_may_come_from_another_site_is_refused_before_the_node(
        plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode, headers: dict, status: int,
        detail: str) -> None:
    answer = call(orthanc, "POST", FORM_POST, body={"hypothesis": HYPOTHESIS}, headers=headers)
    assert answer.status == status and detail in answer.json()["detail"]
    assert node.requests == []


@pytest.mark.parametrize("headers", [
    pytest.param(FORM_HEADERS, id="the-form"),
    pytest.param(_without("origin"), id="no-origin"),
    pytest.param(_without(**{"sec-fetch-site": "same-origin"}), id="fetch-metadata-same-origin"),
    pytest.param(_without(**{"content-type": "Application/JSON; charset=UTF-8"}), id="json-with-charset"),
    pytest.param(_without(host="pacs.example", origin="http://PACS.example:80"), id="default-port"),
    pytest.param(_without(host="orthanc:8042", origin="https://pacs.example",
                          **{"x-forwarded-host": "pacs.example:443"}), id="behind-a-proxy"),
    pytest.param({name.title(): value for name, value in FORM_HEADERS.items()}, id="names-in-other-case"),
])
def test_the_forms_post_passes(plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode,
                               headers: dict) -> None:
    node.answers["POST", "/v1/counterfactuals"] = (201, {"id": JOB_ID, "state": "queued", "results": None})
    assert call(orthanc, "POST", FORM_POST, body={"hypothesis": HYPOTHESIS}, headers=headers).status == 201
    assert len(node.requests) == 1


def test_reads_need_no_form_header(plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode) -> None:
    """The form's GETs (polling, history, settings) send no custom header; they change nothing."""
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (200, {"id": JOB_ID, "state": "running", "results": None})
    assert call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}", headers={}).status == 200
    assert call(orthanc, "GET", "/progemu/config", headers={}).status == 200


def test_the_page_sends_json_and_the_header_with_a_body(plugin: types.ModuleType) -> None:
    script = plugin.ASSETS["page.js"].body
    post = script[script.index("if (body !== undefined) {"):]
    post = post[:post.index("}")]
    assert "init.headers['Content-Type'] = 'application/json';" in post
    assert "init.headers['X-Requested-With'] = 'progemu';" in post


@pytest.mark.parametrize(("headers", "config", "expected"), [
    pytest.param(FORM_HEADERS, {}, USER, id="checked-user"),
    pytest.param(_without(authorization=basic("dr.lee", "pass:with:colons")), {}, USER, id="colons-in-password"),
    pytest.param(_without("authorization"), {}, None, id="no-credentials"),
    pytest.param(_without(authorization="Bearer abc"), {}, None, id="bearer"),
    pytest.param(_without(authorization="Basic not-base64!"), {}, None, id="malformed"),
    pytest.param(_without(authorization=basic("mallory")), {}, None, id="not-a-registered-user"),
    pytest.param(FORM_HEADERS, {"AuthenticationEnabled": False}, None, id="authentication-off"),
    pytest.param(FORM_HEADERS, {"AuthenticationEnabled": None}, None, id="authentication-unset"),
])
def test_the_post_names_the_orthanc_user_orthanc_checked(load: Callable, orthanc: FakeOrthanc, node: FakeNode,
                                                         monkeypatch: pytest.MonkeyPatch, headers: dict,
                                                         config: dict, expected: str | None) -> None:
    orthanc.config.update(config)
    module = load()
    module.register()
    monkeypatch.setattr(module, "OPENER", node)
    node.answers["POST", "/v1/counterfactuals"] = (201, {"id": JOB_ID, "state": "queued", "results": None})
    assert call(orthanc, "POST", FORM_POST, body={"hypothesis": HYPOTHESIS}, headers=headers).status == 201
    assert node.sent().get("requester") == expected
    assert USER not in "\n".join(message for _, message in orthanc.logs)


# --- the node's answers ---------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "payload", "expected_status", "expected_detail"), [
    pytest.param(401, {"detail": "bad token"}, 502,
                 f"the ProgEmu node at {NODE_URL} refused the plugin's token (check ProgEmu.Token)", id="401"),
    pytest.param(403, b"", 502, f"the ProgEmu node at {NODE_URL} refused the plugin's token (check ProgEmu.Token)",
                 id="403"),
    pytest.param(403, {"detail": "this client lacks the on-behalf scope"}, 502,
                 "the ProgEmu node refused the plugin's client: this client lacks the on-behalf scope (check the "
                 "scopes of the client whose token is ProgEmu.Token)", id="403-scope"),
    pytest.param(404, {"detail": "no counterfactual request with this id"}, 404,
                 "no counterfactual request with this id", id="404-with-detail"),
    pytest.param(404, b"<html>", 404, "the ProgEmu node does not know this", id="404-without-detail"),
    pytest.param(422, {"detail": "the hypothesis is empty"}, 400, "the hypothesis is empty", id="422-with-detail"),
    pytest.param(409, {"detail": ["not", "a", "sentence"]}, 400, "the ProgEmu node refused the request (409)",
                 id="409-detail-not-text"),
    pytest.param(500, {"detail": "database locked"}, 502,
                 f"the ProgEmu node at {NODE_URL} failed (500: database locked)", id="500-with-detail"),
    pytest.param(503, b"", 502, f"the ProgEmu node at {NODE_URL} failed (503)", id="503-empty"),
    pytest.param(200, b"<html>not json</html>", 502, f"the ProgEmu node at {NODE_URL} answered 200 without JSON",
                 id="200-not-json"),
])
def test_node_answers_map_to_a_status_and_a_sentence(plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode,
                                                      status: int, payload: Any, expected_status: int,
                                                      expected_detail: str) -> None:
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (status, payload)
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}")
    assert (answer.status, answer.json()) == (expected_status, {"detail": expected_detail})


def test_a_quota_reaches_the_user_as_429_with_when_to_try_again(plugin: types.ModuleType, orthanc: FakeOrthanc,
                                                                node: FakeNode) -> None:
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (
        429, {"detail": "this client has 20 requests waiting or running"}, {"Retry-After": "60"})
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}")
    assert (answer.status, answer.json()) == (429, {"detail": "this client has 20 requests waiting or running"})
    assert answer.headers["Retry-After"] == "60"


@pytest.mark.parametrize(("error", "reason"), [
    pytest.param(urllib.error.URLError(TimeoutError("timed out")), "no answer within 30 s", id="connect-timeout"),
    pytest.param(TimeoutError("timed out"), "no answer within 30 s", id="read-timeout"),
    pytest.param(urllib.error.URLError(ConnectionRefusedError(111, "refused")), "connection refused", id="refused"),
    pytest.param(http.client.RemoteDisconnected("closed"), "RemoteDisconnected", id="disconnected"),
])
def test_node_unreachable_names_the_reason(plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode,
                                           error: BaseException, reason: str) -> None:
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = error
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}")
    assert (answer.status, answer.json()) == (502, {"detail": f"the ProgEmu node at {NODE_URL} is not reachable "
                                                              f"({reason})"})


@pytest.mark.parametrize(("method", "uri"), [
    ("POST", f"/progemu/studies/{STUDY_ID}/counterfactuals"),
    ("GET", f"/progemu/studies/{STUDY_ID}/counterfactuals"),
    ("GET", f"/progemu/counterfactuals/{JOB_ID}"),
])
def test_node_at_a_closed_port_is_502(load: Callable, orthanc: FakeOrthanc, method: str, uri: str) -> None:
    node_url = f"http://127.0.0.1:{free_port()}"
    orthanc.config["ProgEmu"]["NodeUrl"] = node_url
    load().register()
    answer = call(orthanc, method, uri, body={"hypothesis": HYPOTHESIS})
    assert (answer.status, answer.json()) == (502, {"detail": f"the ProgEmu node at {node_url} is not reachable "
                                                              "(connection refused)"})


def test_no_token_is_502_naming_the_setting(load: Callable, orthanc: FakeOrthanc, node: FakeNode,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    orthanc.config["ProgEmu"]["Token"] = ""
    module = load()
    module.register()
    monkeypatch.setattr(module, "OPENER", node)
    assert "no ProgEmu.Token set" in orthanc.warnings()
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}")
    assert answer.status == 502 and "set ProgEmu.Token" in answer.json()["detail"]
    assert node.requests == []


# --- a job's outputs ------------------------------------------------------------------------------

def test_done_job_links_each_output_with_its_label(plugin: types.ModuleType, orthanc: FakeOrthanc,
                                                   node: FakeNode) -> None:
    """The links follow ``results.outputs`` in its order; a series Orthanc does not hold yet has no id."""
    orthanc.series = {"1.2.3.1": "sc-orthanc-id", "1.2.3.3": "page-orthanc-id"}
    job = {"id": JOB_ID, "state": "done", "results": RESULTS}
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (200, job)
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}").json()
    assert answer["orthanc_series"] == [
        {"kind": "sc", "label": "Counterfactual image (SC)", "uid": "1.2.3.1", "id": "sc-orthanc-id"},
        {"kind": "sr", "label": "Structured report (SR)", "uid": "1.2.3.2", "id": None},
        {"kind": "report_page", "label": "Report page (SC)", "uid": "1.2.3.3", "id": "page-orthanc-id"},
    ]
    added = {"orthanc_series", "report_image", "viewers"}
    assert {key: value for key, value in answer.items() if key not in added} == job


def test_a_new_kind_of_output_is_shown_under_its_own_name(plugin: types.ModuleType, orthanc: FakeOrthanc,
                                                          node: FakeNode) -> None:
    results = {**RESULTS, "outputs": [{**OUTPUTS[0], "kind": "segmentation"}]}
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (200, {"id": JOB_ID, "state": "done", "results": results})
    [link] = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}").json()["orthanc_series"]
    assert (link["kind"], link["label"]) == ("segmentation", "segmentation")


def test_unfinished_job_has_no_links(plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode) -> None:
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (200, {"id": JOB_ID, "state": "running", "results": None})
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}")
    assert answer.status == 200 and answer.json()["orthanc_series"] == []


@pytest.mark.parametrize("results", [
    pytest.param({"sc": {"series_instance_uid": "1.2.3.1", "sop_instance_uid": "1.2.3.1.1"},
                  "interpretation": "The effusion is larger."}, id="keyed-by-kind"),
    pytest.param({**RESULTS, "outputs": {"sc": OUTPUTS[0]}}, id="outputs-not-a-list"),
    pytest.param({**RESULTS, "outputs": [{"series_instance_uid": "1.2.3.1"}]}, id="output-without-kind"),
    pytest.param({**RESULTS, "outputs": [{"kind": "sc", "series_instance_uid": 123}]}, id="uid-not-text"),
    pytest.param(["1.2.3.1"], id="results-a-list"),
])
def test_results_in_another_shape_are_502_not_guessed(plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode,
                                                      results: Any) -> None:
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (200, {"id": JOB_ID, "state": "done", "results": results})
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}")
    assert answer.status == 502
    assert answer.json()["detail"] == (f"the ProgEmu node at {NODE_URL} answered with results this plugin cannot read "
                                       "(are the node and the plugin the same version?)")


# --- the result on the page -----------------------------------------------------------------------

def test_done_job_names_the_report_page_instance_and_the_viewers(load: Callable, orthanc: FakeOrthanc,
                                                                  node: FakeNode,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The page shows the report page through Orthanc's rendering of its instance, and links the study."""
    orthanc.config["ProgEmu"]["Viewers"] = [
        {"Name": "Orthanc Explorer", "Url": "app/explorer.html#study?uuid={UUID}"},
        {"Name": "OHIF", "Url": "https://ohif.test/viewer?StudyInstanceUIDs={StudyInstanceUID}"}]
    module = load()
    module.register()
    monkeypatch.setattr(module, "OPENER", node)
    orthanc.instances = {"1.2.3.3.1": "page-instance-id", "1.2.3.1.1": "sc-instance-id"}
    job = {"id": JOB_ID, "state": "done", "study_instance_uid": STUDY_UID, "results": RESULTS}
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (200, job)
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}").json()
    assert answer["report_image"] == "page-instance-id"
    assert answer["viewers"] == [
        {"name": "Orthanc Explorer", "url": f"app/explorer.html#study?uuid={STUDY_ID}"},
        {"name": "OHIF", "url": f"https://ohif.test/viewer?StudyInstanceUIDs={STUDY_UID}"}]


def test_a_viewer_that_needs_the_orthanc_id_is_left_out_while_orthanc_lacks_the_study(
        plugin: types.ModuleType, orthanc: FakeOrthanc, node: FakeNode) -> None:
    job = {"id": JOB_ID, "state": "running", "study_instance_uid": "1.2.999", "results": None}
    node.answers["GET", f"/v1/counterfactuals/{JOB_ID}"] = (200, job)
    answer = call(orthanc, "GET", f"/progemu/counterfactuals/{JOB_ID}").json()
    assert (answer["report_image"], answer["viewers"]) == (None, [])  # the default: Orthanc Explorer, by {UUID}


def test_the_request_page_of_a_study_is_served_with_its_files(plugin: types.ModuleType, orthanc: FakeOrthanc) -> None:
    page = call(orthanc, "GET", f"/progemu/app/studies/{STUDY_ID}", headers={})
    assert page.status == 200 and page.headers["Content-Type"] == "text/html" and page.body.isascii()
    assert page.body == (PLUGIN_SCRIPT.parent / "app" / "page.html").read_text(encoding="utf-8")
    assert "frame-ancestors 'self'" in page.headers["Content-Security-Policy"]
    assert '<script src="../page.js">' in page.body and '<link rel="stylesheet" href="../page.css">' in page.body
    for name, mime in (("page.js", "text/javascript"), ("page.css", "text/css")):
        answer = call(orthanc, "GET", f"/progemu/app/{name}", headers={})
        assert (answer.status, answer.headers["Content-Type"]) == (200, mime)
        assert answer.body.isascii(), f"{name} must be ASCII: Orthanc is given its length in characters"
    assert call(orthanc, "GET", f"/progemu/app/studies/{UNKNOWN_STUDY}", headers={}).status == 404
    assert call(orthanc, "POST", f"/progemu/app/studies/{STUDY_ID}").status == 405
    with pytest.raises(AssertionError, match="no route"):
        call(orthanc, "GET", "/progemu/app/progemu_orthanc.py")


def test_the_explorer_button_opens_the_page_of_the_study(plugin: types.ModuleType, orthanc: FakeOrthanc) -> None:
    """One form: the legacy Explorer's button only links the page, in a new tab."""
    [script] = orthanc.explorer
    assert "'../progemu/app/studies/' + studyFromUrl()" in script and 'target="_blank"' in script
    assert "progemu-hypothesis" not in script
