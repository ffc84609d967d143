"""A real Orthanc with the ProgEmu plugin (plugin/orthanc) and a real node behind it, for tests.

The Orthanc configuration is docker/orthanc/orthanc.json, the demo's, with only what a test must
change: free ports and storage (tests.support.orthanc_server owns those), the plugin script from this
checkout, and the node's address, token and DICOM port.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid

from tests.support.net import free_port, wait_for
from tests.support.node_server import API_TOKEN, NodeServer
from tests.support.orthanc_server import PASSWORD, USER, OrthancServer

ROOT = Path(__file__).resolve().parents[2]
ORTHANC_JSON = ROOT / "docker" / "orthanc" / "orthanc.json"
PLUGIN_SCRIPT = ROOT / "plugin" / "orthanc" / "progemu_orthanc.py"
DEMO_PRIOR = ROOT / "plugin" / "assets" / "demo_prior.dcm"
ARTIFACTS = ROOT / "test-artifacts"
# what tests.support.orthanc_server.OrthancServer sets for every test Orthanc: free ports, its own storage, users
SERVER_OWNED = {"Name", "HttpPort", "DicomPort", "DicomAet", "StorageDirectory", "IndexDirectory",
                "RemoteAccessAllowed", "AuthenticationEnabled", "RegisteredUsers"}
# a // or /* */ comment, or a JSON string (kept whole: "http://node:8080" holds no comment)
_COMMENT_OR_STRING = re.compile(r'"(?:\\.|[^\\"])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)


def load_orthanc_json(path: Path = ORTHANC_JSON) -> dict:
    """Orthanc's configuration file as Orthanc reads it: JSON with C++-style comments."""
    text = _COMMENT_OR_STRING.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", path.read_text())
    return json.loads(text)


def plugin_config(*, node_url: str, node_dicom_port: int, token: str = API_TOKEN, **progemu: object) -> dict:
    """docker/orthanc/orthanc.json pointed at a test node (``progemu`` overrides ProgEmu settings)."""
    base = load_orthanc_json()
    config = {key: value for key, value in base.items() if key not in SERVER_OWNED}
    node_aet = base["DicomModalities"]["PROGEMU"][0]
    config["DicomModalities"] = {**base["DicomModalities"], "PROGEMU": [node_aet, "127.0.0.1", node_dicom_port]}
    config["PythonScript"] = str(PLUGIN_SCRIPT)
    config["ProgEmu"] = {**base["ProgEmu"], "NodeUrl": node_url, "Token": token, **progemu}
    return config


@dataclass
class PluginStack:
    """Orthanc with the plugin, and the node it calls (``node`` is None for an Orthanc whose node is down)."""

    orthanc: OrthancServer
    node: NodeServer | None

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """A call to Orthanc's REST API (the plugin's routes included) as the test user."""
        return httpx.request(method, self.orthanc.url + path, auth=(USER, PASSWORD), timeout=60, **kwargs)

    def upload_prior(self, workdir: Path) -> tuple[str, str]:
        """The shipped demo prior under fresh UIDs: (Orthanc study id, StudyInstanceUID)."""
        ds = pydicom.dcmread(DEMO_PRIOR)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        self.orthanc.upload(path)
        study_id = self.orthanc.client.studies.lookup(ds.StudyInstanceUID)
        assert study_id, "Orthanc did not index the uploaded prior"
        return study_id, ds.StudyInstanceUID

    def wait_for_job(self, job_id: str, timeout: float = 60) -> dict:
        """Poll the plugin's job route (as the Explorer form does) until the job is done or failed."""
        def finished() -> dict | None:
            job = self.request("GET", f"/progemu/counterfactuals/{job_id}").json()
            return job if job["state"] in {"done", "failed"} else None

        where = f"Orthanc log: {self.orthanc.log_path}" + (f", node log: {self.node.log_path}" if self.node else "")
        return wait_for(finished, timeout, f"job {job_id} to finish ({where})", interval=0.25)

    def diagnostics(self) -> str:
        parts = [f"--- Orthanc log ---\n{self.orthanc.log_tail()}"]
        if self.node:
            parts.append(f"--- node log ---\n{self.node.log_tail()}")
        return "\n".join(parts)


def start_stack(workdir: Path, **progemu: object) -> PluginStack:
    """Orthanc (plugin loaded, PROGEMU modality = the node) and the node (its PACS = this Orthanc).

    ``progemu`` overrides settings of the plugin's ProgEmu section (e.g. DefaultSeed=5).
    """
    node = NodeServer(workdir / "node", dicom_port=free_port())
    orthanc = OrthancServer(workdir / "orthanc",
                            extra=plugin_config(node_url=node.url, node_dicom_port=node.dicom_port, **progemu))
    node.env.update({"PROGEMU_PACS_URL": orthanc.url, "PROGEMU_PACS_USERNAME": USER,
                     "PROGEMU_PACS_PASSWORD": PASSWORD,
                     "PROGEMU_PEERS": f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"})
    stack = PluginStack(orthanc.start(), None)
    try:
        stack.node = node.start()
    except BaseException:
        stop(stack.orthanc, node)
        raise
    return stack


def start_orthanc(workdir: Path, *, node_url: str, token: str = API_TOKEN, **progemu: object) -> PluginStack:
    """Orthanc with the plugin only, its node at ``node_url`` (e.g. a port nobody listens on)."""
    config = plugin_config(node_url=node_url, node_dicom_port=free_port(), token=token, **progemu)
    return PluginStack(OrthancServer(workdir, extra=config).start(), None)


def stop(*servers: OrthancServer | NodeServer | None) -> None:
    """Stop them all at once: Orthanc takes seconds to stop, and these tests start several."""
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        list(pool.map(lambda server: server and server.stop(), servers))
