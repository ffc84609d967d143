"""Orthanc plugin: ask the ProgEmu node for a counterfactual of a study, from a page Orthanc serves.

Runs inside Orthanc (orthanc-python, Debian's Python 3.11), so it uses the standard library only.
It validates what the radiologist typed, relays it to the node's REST API with the node's bearer
token (which never reaches the browser), and maps every failure to a 4xx/502 with a one-sentence
``detail``: an uncaught exception would become a bare 500 without explanation.

Cross-site requests: the routes sit behind Orthanc's Basic authentication, which a browser replays for any
page, so a POST must prove it comes from the request page (:func:`_refuse_cross_site`): a JSON content type
and a custom header, neither of which a cross-site form can send without a CORS preflight that Orthanc never
grants, and no foreign Origin. The job names the Orthanc user who asked (``requester``), taken from the Basic
credentials Orthanc has already checked.

The request page (``/progemu/app/studies/{id}``, files in app/) is the one form: the legacy Explorer's button
(explorer.js) and Orthanc Explorer 2's CustomButtons entry both open it, since OE2 loads no Explorer extension.

Configuration: the ``ProgEmu`` section of Orthanc's configuration (see docker/orthanc/orthanc.json),
read by :func:`register`, which adds the routes, the page and the Explorer button to Orthanc. Orthanc's
import of this file calls it (see the end); a test's import, with a stand-in ``orthanc`` module, does not.
Nothing about the patient (tags, hypothesis text) goes into the log.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orthanc

ORTHANC_ID = r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}"
JOB_ID = r"[A-Za-z0-9_-]{1,64}"
JSON = "application/json"
# what app/page.js sends with every POST: a header a cross-site form cannot add without a CORS preflight
FORM_HEADER, FORM_HEADER_VALUE = "X-Requested-With", "progemu"
MAX_CFG_SCALE = 30.0
MAX_BODY_BYTES = 64 * 1024
BODY_FIELDS = {"hypothesis", "seed", "cfg_scale", "allow_out_of_distribution"}
DEFAULT_SUGGESTIONS = (
    "the left pleural effusion worsens",
    "the right pleural effusion resolves",
    "the cardiomegaly progresses",
    "a right upper lobe consolidation develops",
    "the pulmonary oedema improves",
    "a left-sided pneumothorax appears",
)
NOTICE = "Synthetic images, not for diagnosis"
# viewers the page links a study to, by name: a URL template relative to Orthanc's root (or absolute), its
# placeholders {UUID} (the study's Orthanc id) and {StudyInstanceUID}
DEFAULT_VIEWERS = (("Orthanc Explorer", "app/explorer.html#study?uuid={UUID}"),)
APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app")
# the page's own files; register() reads them once
APP_FILES = {"page.html": "text/html", "page.js": "text/javascript", "page.css": "text/css"}
# the page loads nothing but its own files and Orthanc's rendering of an instance, and is framed by Orthanc only
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'; form-action 'none'"
# the node's results.outputs[].kind, as the request page names the new series
OUTPUT_LABELS = {"sc": "Counterfactual image (SC)", "sr": "Structured report (SR)", "report_page": "Report page (SC)",
                 "pdf": "Report (PDF)"}
# straight to the node: it sits on Orthanc's own network, and an http_proxy in Orthanc's environment must not catch it
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Problem(Exception):
    """An answer other than success: HTTP status plus one sentence for the user."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


# --- settings ------------------------------------------------------------------------------------

def _section(config: dict[str, Any]) -> dict[str, Any]:
    """The ProgEmu section, merged over any case variant of its name.

    The orthancteam image turns ORTHANC__PROG_EMU__TOKEN into ``ProgEmu.Token`` but
    ORTHANC__PROGEMU__TOKEN into ``Progemu.Token``; both spellings should reach us.
    """
    merged: dict[str, Any] = {}
    for key in sorted((k for k in config if k.lower() == "progemu"), key=lambda k: k != "ProgEmu"):
        if isinstance(config[key], dict):
            merged.update(config[key])
    return merged


def _in_range(value: Any, kind: type, low: float, high: float = math.inf) -> bool:
    """A JSON number of ``kind`` from low to high: JSON's true/false are not numbers, NaN is in no range,
    and a whole number will do where a float is asked."""
    kinds = (int,) if kind is int else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high


def _setting(section: dict[str, Any], key: str, default: Any, expected: str, valid: Callable[[Any], bool]) -> Any:
    """One setting, its default when absent. A bad one is logged by name (never by value: it may be the token)
    and its default used, so a typo in the configuration leaves the form working."""
    value = section.get(key)
    if value is None or value == "":
        return default
    if valid(value):
        return value
    orthanc.LogWarning(f"ProgEmu: ignoring ProgEmu.{key}, which is not {expected}; using the default")
    return default


def _number(section: dict[str, Any], key: str, kind: type, default: Any, low: float, high: float = math.inf) -> Any:
    span = f"{low:g} or more" if high == math.inf else f"from {low:g} to {high:g}"
    value = _setting(section, key, default, f"a {'whole ' if kind is int else ''}number {span}",
                     lambda v: _in_range(v, kind, low, high))
    return None if value is None else kind(value)


@dataclass(frozen=True)
class Settings:
    """The ProgEmu section, checked; the defaults are what an empty section means."""

    node_url: str = "http://127.0.0.1:8080"
    token: str | None = None
    timeout: float = 30.0
    default_seed: int | None = None
    default_cfg_scale: float | None = None
    max_length: int = 500
    suggestions: tuple[str, ...] = DEFAULT_SUGGESTIONS
    # Orthanc's RegisteredUsers when it checks them (AuthenticationEnabled): only these are named as requester
    users: frozenset[str] = frozenset()
    viewers: tuple[tuple[str, str], ...] = DEFAULT_VIEWERS


def _checked_users(config: dict[str, Any]) -> frozenset[str]:
    """The users whose Basic credentials Orthanc checks before calling a route: none unless authentication is on."""
    users = config.get("RegisteredUsers")
    if config.get("AuthenticationEnabled") is not True or not isinstance(users, dict):
        return frozenset()
    return frozenset(user for user in users if isinstance(user, str) and user)


def load_settings(config: dict[str, Any]) -> Settings:
    """Settings from Orthanc's whole configuration."""
    section = _section(config)
    # an env-var token of digits arrives as a number (the orthancteam image parses values as JSON)
    token = _setting(section, "Token", None, "text", lambda v: isinstance(v, (str, int)) and not isinstance(v, bool))
    suggestions = _setting(section, "Suggestions", Settings.suggestions, "a list of phrases",
                           lambda v: isinstance(v, list) and all(isinstance(s, str) and s.strip() for s in v))
    # a list, not an object: Orthanc hands the configuration over with its objects' keys sorted
    viewers = _setting(section, "Viewers", [{"Name": n, "Url": u} for n, u in Settings.viewers],
                       'a list of {"Name": ..., "Url": ...}',
                       lambda v: isinstance(v, list) and all(
                           isinstance(x, dict) and set(x) == {"Name", "Url"} and all(
                               isinstance(t, str) and t.strip() for t in x.values()) for x in v))
    node_url = _setting(section, "NodeUrl", Settings.node_url, "an http(s) URL",
                        lambda v: isinstance(v, str) and re.match(r"https?://[^/]", v) is not None)
    return Settings(
        node_url=node_url.rstrip("/"),
        token=None if token is None else str(token),
        timeout=_number(section, "Timeout", float, Settings.timeout, 1, 3600),
        default_seed=_number(section, "DefaultSeed", int, None, 0),
        default_cfg_scale=_number(section, "DefaultGuidanceScale", float, None, 0, MAX_CFG_SCALE),
        max_length=_number(section, "MaxHypothesisLength", int, Settings.max_length, 1),
        suggestions=tuple(s.strip() for s in suggestions),
        users=_checked_users(config),
        viewers=tuple((viewer["Name"].strip(), viewer["Url"].strip()) for viewer in viewers),
    )


SETTINGS = Settings()  # register() replaces it with Orthanc's configuration


# --- answers -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Asset:
    """A file of the request page, answered as it is rather than as JSON."""

    mime: str
    body: str


def _send(output: Any, status: int, payload: Any) -> None:
    """JSON (or a page's file) with a status. ASCII-only text keeps len(body) equal to its byte count.

    SendHttpStatus takes (int, str, int) in orthanc-python 4.0 (bytes make it answer 500); it is
    the only way to send a body with a status other than 200. Where it fails we still send the code.
    """
    if isinstance(payload, Asset):
        output.SetHttpHeader("Content-Security-Policy", PAGE_POLICY)
        output.SetHttpHeader("X-Content-Type-Options", "nosniff")
        output.AnswerBuffer(payload.body, payload.mime)
        return
    body = json.dumps(payload, ensure_ascii=True)
    if status == 200:
        output.AnswerBuffer(body, "application/json")
        return
    try:
        output.SetHttpHeader("Content-Type", "application/json")
        output.SendHttpStatus(status, body, len(body))
    except Exception as exc:  # noqa: BLE001 - the status code alone is better than a 500
        orthanc.LogWarning(f"ProgEmu: could not send an answer body ({type(exc).__name__})")
        output.SendHttpStatusCode(status)


def _headers(request: dict) -> dict[str, str]:
    """The request's headers by lower-case name (orthanc-python passes them lower-cased already)."""
    return {str(name).lower(): str(value) for name, value in (request.get("headers") or {}).items()}


def _host_port(netloc: str, default: int) -> tuple[str, int] | None:
    parts = urllib.parse.urlsplit(f"//{netloc}")
    try:
        return (parts.hostname, parts.port or default) if parts.hostname else None
    except ValueError:  # a port that is not a number
        return None


def _same_origin(origin: str, hosts: list[str]) -> bool:
    """Whether the browser's Origin is this Orthanc: the Host it was asked by (or a proxy's X-Forwarded-Host)."""
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.path or parts.query:
        return False
    default = 443 if parts.scheme == "https" else 80
    own = _host_port(parts.netloc, default)
    return own is not None and any(_host_port(host.strip(), default) == own for host in hosts if host.strip())


def _refuse_cross_site(request: dict) -> None:
    """Refuse a POST that may come from another site riding on the user's Basic credentials (CSRF).

    A cross-site HTML form or a "simple" fetch can only send text/plain or form content types and no custom
    header; anything more needs a CORS preflight, which Orthanc does not grant. A foreign Origin or a
    cross-site Sec-Fetch-Site is refused outright.
    """
    headers = _headers(request)
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, [headers.get("host", ""),
                                                         *headers.get("x-forwarded-host", "").split(",")]):
        raise Problem(403, "cross-site request refused: it comes from another site than this Orthanc")
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise Problem(403, "cross-site request refused: it comes from another site than this Orthanc")
    if headers.get("content-type", "").partition(";")[0].strip().lower() != JSON:
        raise Problem(415, f"the request body must be sent as {JSON}")
    if headers.get(FORM_HEADER.lower()) != FORM_HEADER_VALUE:
        raise Problem(403, f"request refused: it lacks the {FORM_HEADER}: {FORM_HEADER_VALUE} header "
                           "that the ProgEmu form sends")


def route(methods: str):
    """Wrap a handler: method check, a cross-site check of anything but GET, then any failure answered as a
    status with a ``detail``."""
    allowed = set(methods.split(","))

    def wrap(handler):
        def callback(output: Any, uri: str, **request: Any) -> None:
            if request.get("method") not in allowed:
                output.SendMethodNotAllowed(methods)
                return
            try:
                if request.get("method") != "GET":
                    _refuse_cross_site(request)
                status, payload = handler(request)
            except Problem as problem:
                status, payload = problem.status, {"detail": problem.detail}
                for name, value in problem.headers.items():
                    output.SetHttpHeader(name, value)
            except Exception as exc:  # noqa: BLE001 - never a bare 500 without a reason
                orthanc.LogWarning(f"ProgEmu: {request.get('method')} failed: {type(exc).__name__}")
                status, payload = 502, {"detail": f"the ProgEmu plugin failed ({type(exc).__name__})"}
            _send(output, status, payload)

        return callback

    return wrap


# --- Orthanc and the node ------------------------------------------------------------------------

def _study_uid(study_id: str) -> str:
    try:
        study = json.loads(orthanc.RestApiGet(f"/studies/{study_id}"))
    except orthanc.OrthancException:
        raise Problem(404, "Orthanc holds no study with this id") from None
    uid = study.get("MainDicomTags", {}).get("StudyInstanceUID")
    if not uid:
        raise Problem(404, "the study has no StudyInstanceUID")
    return uid


def _orthanc_id(uid: str, level: str) -> str | None:
    """The Orthanc id of a study, series or instance (``level``: Study, Series, Instance) by its DICOM UID."""
    try:
        found = json.loads(orthanc.RestApiPost("/tools/lookup", uid))
    except orthanc.OrthancException:
        return None
    return next((item["ID"] for item in found if item.get("Type") == level), None)


def _node(method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    """Call the node's API; node-side failures become 502/404/400 Problems with a clear sentence."""
    url = SETTINGS.node_url
    if not SETTINGS.token:
        raise Problem(502, "the ProgEmu plugin has no token for the node: set ProgEmu.Token in Orthanc's configuration")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {SETTINGS.token}", "Accept": "application/json",
        **({"Content-Type": "application/json"} if data is not None else {})})
    try:
        with OPENER.open(request, timeout=SETTINGS.timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, detail = error.code, _detail(error)
        retry_after = error.headers.get("Retry-After") if error.headers else None
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        orthanc.LogWarning(f"ProgEmu: {method} {path.split('?')[0]} -> node unreachable ({type(exc).__name__})")
        raise Problem(502, f"the ProgEmu node at {url} is not reachable ({_reason(exc)})") from None
    else:
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            raise Problem(502, f"the ProgEmu node at {url} answered {status} without JSON") from None
    log = orthanc.LogInfo if status in (404, 422) else orthanc.LogWarning
    log(f"ProgEmu: {method} {path.split('?')[0]} -> node answered {status}")
    if status == 401 or (status == 403 and not detail):
        raise Problem(502, f"the ProgEmu node at {url} refused the plugin's token (check ProgEmu.Token)")
    if status == 403:  # the token is good, its client may not do this (a scope it lacks)
        raise Problem(502, f"the ProgEmu node refused the plugin's client: {detail} (check the scopes of the "
                           "client whose token is ProgEmu.Token)")
    if status == 429:  # a quota: the user may try again, and when
        raise Problem(429, detail or "the ProgEmu node is busy: try again later",
                      {"Retry-After": retry_after} if retry_after and retry_after.isdigit() else None)
    if status == 404:
        raise Problem(404, detail or "the ProgEmu node does not know this")
    if 400 <= status < 500:
        raise Problem(400, detail or f"the ProgEmu node refused the request ({status})")
    raise Problem(502, f"the ProgEmu node at {url} failed ({status}{': ' + detail if detail else ''})")


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read()).get("detail")
    except Exception:  # noqa: BLE001 - a body that is not our JSON carries no usable sentence
        return ""
    return detail if isinstance(detail, str) else ""


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError):
        return f"no answer within {SETTINGS.timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return type(reason).__name__


def _outputs(results: Any) -> list[dict[str, Any]]:
    """The job's ``results.outputs`` (None until it is done), as the node's API defines them. Another shape
    means another version of the node: saying so beats showing no series."""
    if results is None:
        return []
    outputs = results.get("outputs") if isinstance(results, dict) else None
    if isinstance(outputs, list) and all(isinstance(output, dict) and isinstance(output.get("kind"), str)
                                         and isinstance(output.get("series_instance_uid"), str) for output in outputs):
        return outputs
    raise Problem(502, f"the ProgEmu node at {SETTINGS.node_url} answered with results this plugin cannot read "
                       "(are the node and the plugin the same version?)")


def requester(request: dict) -> str | None:
    """The Orthanc user who asked: the Basic credentials' user name, when Orthanc checked them (a user of
    RegisteredUsers with AuthenticationEnabled). None otherwise: an unchecked name is not named."""
    scheme, _, credentials = _headers(request).get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[0]
    except ValueError:  # binascii.Error and UnicodeDecodeError included
        return None
    return user if user in SETTINGS.users else None


# --- validation ----------------------------------------------------------------------------------

def _json_body(request: dict) -> dict:
    raw = request.get("body") or b""
    if len(raw) > MAX_BODY_BYTES:
        raise Problem(400, "the request body is too large")
    try:
        body = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        raise Problem(400, 'the request body must be JSON, e.g. {"hypothesis": "the left pleural effusion worsens"}') \
            from None
    if not isinstance(body, dict):
        raise Problem(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise Problem(400, f"unexpected field {unknown[0]!r}: send hypothesis, and optionally seed, cfg_scale "
                           "and allow_out_of_distribution")
    return body


def validate(body: dict) -> dict[str, Any]:
    """What the node gets: the hypothesis, plus seed and guidance scale (given, or the configured default)."""
    hypothesis = body.get("hypothesis")
    if not isinstance(hypothesis, str):
        raise Problem(400, "the hypothesis must be text")
    folded = " ".join(hypothesis.split())
    if not folded:
        raise Problem(400, "the hypothesis is empty: describe the change to show, e.g. 'the effusion worsens'")
    if len(folded) > SETTINGS.max_length:
        raise Problem(400, f"the hypothesis has {len(folded)} characters; the limit is {SETTINGS.max_length}")
    out: dict[str, Any] = {"hypothesis": hypothesis.strip()}
    seed = body.get("seed")
    if seed is not None:
        if not _in_range(seed, int, 0):
            raise Problem(400, "the seed must be a whole number of 0 or more")
        out["seed"] = seed
    elif SETTINGS.default_seed is not None:
        out["seed"] = SETTINGS.default_seed
    cfg = body.get("cfg_scale")
    if cfg is not None:
        if not _in_range(cfg, float, 0, MAX_CFG_SCALE):
            raise Problem(400, f"the guidance scale must be a number from 0 to {MAX_CFG_SCALE:g}")
        out["cfg_scale"] = float(cfg)
    elif SETTINGS.default_cfg_scale is not None:
        out["cfg_scale"] = SETTINGS.default_cfg_scale
    override = body.get("allow_out_of_distribution", False)
    if not isinstance(override, bool):
        raise Problem(400, "allow_out_of_distribution must be true or false")
    if override:
        out["allow_out_of_distribution"] = True
    return out


# --- routes --------------------------------------------------------------------------------------

@route("GET,POST")
def study_counterfactuals(request: dict) -> tuple[int, Any]:
    study_uid = _study_uid(request["groups"][0])
    if request["method"] == "GET":
        limit = (request.get("get") or {}).get("limit", "50")
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= 1000:
            raise Problem(400, "limit must be a whole number from 1 to 1000")
        query = urllib.parse.urlencode({"study_instance_uid": study_uid, "limit": limit})
        return _node("GET", f"/v1/counterfactuals?{query}")
    body = {**validate(_json_body(request)), "study_instance_uid": study_uid}
    user = requester(request)
    if user is not None:
        body["requester"] = user  # the node records it under the plugin's client (its on-behalf scope)
    status, job = _node("POST", "/v1/counterfactuals", body)
    orthanc.LogInfo(f"ProgEmu: counterfactual job {job.get('id')} requested ({status})")
    return status, job


def _viewers(study_uid: Any) -> list[dict[str, str]]:
    """The configured viewers' links to the study, relative to Orthanc's root unless absolute; a template
    that needs the study's Orthanc id is left out while Orthanc does not hold the study."""
    if not isinstance(study_uid, str):
        return []
    study_id = _orthanc_id(study_uid, "Study")
    links = []
    for name, template in SETTINGS.viewers:
        if "{UUID}" in template and study_id is None:
            continue
        url = template.replace("{StudyInstanceUID}", urllib.parse.quote(study_uid, safe=""))
        links.append({"name": name, "url": url.replace("{UUID}", study_id or "")})
    return links


def _report_image(outputs: list[dict[str, Any]]) -> str | None:
    """The Orthanc id of the report page's instance, which the page shows through Orthanc's own rendering."""
    uid = next((output.get("sop_instance_uid") for output in outputs if output["kind"] == "report_page"), None)
    return _orthanc_id(uid, "Instance") if isinstance(uid, str) else None


@route("GET")
def counterfactual(request: dict) -> tuple[int, Any]:
    """The node's job plus what the page shows: per DICOM output a label and the series' Orthanc id (None
    until Orthanc holds it), the report page's Orthanc instance id, and the links to the study's viewers."""
    _, job = _node("GET", f"/v1/counterfactuals/{request['groups'][0]}")
    outputs = _outputs(job.get("results"))
    job["orthanc_series"] = [{"kind": output["kind"], "label": OUTPUT_LABELS.get(output["kind"], output["kind"]),
                              "uid": output["series_instance_uid"],
                              "id": _orthanc_id(output["series_instance_uid"], "Series")}
                             for output in outputs]
    job["report_image"] = _report_image(outputs)
    job["viewers"] = _viewers(job.get("study_instance_uid"))
    return 200, job


@route("GET")
def form_config(request: dict) -> tuple[int, Any]:
    """What the request page needs; never the node's address or token."""
    return 200, {"suggestions": SETTINGS.suggestions, "max_hypothesis_length": SETTINGS.max_length,
                 "default_seed": SETTINGS.default_seed, "default_cfg_scale": SETTINGS.default_cfg_scale,
                 "max_cfg_scale": MAX_CFG_SCALE, "notice": NOTICE}


ASSETS: dict[str, Asset] = {}  # register() reads app/ into it


@route("GET")
def request_page(request: dict) -> tuple[int, Any]:
    """The request page of a study Orthanc holds (its script reads the study's id from the address)."""
    _study_uid(request["groups"][0])
    return 200, ASSETS["page.html"]


@route("GET")
def app_file(request: dict) -> tuple[int, Any]:
    return 200, ASSETS[request["groups"][0]]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def register() -> None:
    """Read the settings and the page's files, then add the routes, the page and the Explorer button to
    Orthanc: the plugin's start."""
    global SETTINGS
    SETTINGS = load_settings(json.loads(orthanc.GetConfiguration()))
    ASSETS.update({name: Asset(mime, _read(os.path.join(APP_DIR, name))) for name, mime in APP_FILES.items()})
    orthanc.RegisterRestCallback(f"/progemu/studies/({ORTHANC_ID})/counterfactuals", study_counterfactuals)
    orthanc.RegisterRestCallback(f"/progemu/counterfactuals/({JOB_ID})", counterfactual)
    orthanc.RegisterRestCallback("/progemu/config", form_config)
    orthanc.RegisterRestCallback(f"/progemu/app/studies/({ORTHANC_ID})", request_page)
    orthanc.RegisterRestCallback(r"/progemu/app/(page\.js|page\.css)", app_file)
    orthanc.ExtendOrthancExplorer(_read(os.path.join(os.path.dirname(APP_DIR), "explorer.js")))
    orthanc.LogWarning(f"ProgEmu: plugin ready; node at {SETTINGS.node_url}"
                       + ("" if SETTINGS.token else " (no ProgEmu.Token set: requests will fail)"))


# Orthanc imports this file (its PythonScript) into an interpreter where `orthanc` is a built-in module; tests
# import it with a stand-in `orthanc` module and call register() themselves. No second loader file to keep.
if "orthanc" in sys.builtin_module_names:
    register()
