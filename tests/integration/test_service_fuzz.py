"""The running service under hostile input: schemathesis fuzzing, abuse cases, key and model safety.

Uses the session's `bentoml serve` of the smoke bento (conftest.py), loopback only. Every request
here must get an answer below 500 with a reason, and the service must stay ready afterwards.
"""

from __future__ import annotations

import ast
import json
import socket
from urllib.parse import urlparse

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.integration.conftest import API_KEY, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Generated cases per (operation, mode); /classify alone gets 2 x this, the probes far fewer
# (nothing to vary). The total is asserted below, so a silently tiny run fails.
EXAMPLES = 300
MIN_CASES = 500


@pytest.fixture(scope="module")
def openapi(client) -> dict:
    """The spec BentoML 1.4 serves at /docs.json."""
    response = client.get("/docs.json")
    assert response.status_code == 200, response.text
    return response.json()


def test_spec_documents_classify(openapi):
    assert "post" in openapi["paths"]["/classify"]


def _fuzz(operation, mode: GenerationMode, base_url: str, session, counts: dict[str, int],
          failures: list[str]) -> None:
    """Up to EXAMPLES generated cases of one operation; 5xx answers are collected, not raised."""
    label = f"{operation.method.upper()} {operation.path} {mode.value}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call(base_url=base_url, session=session, timeout=30)
        counts[label] = counts.get(label, 0) + 1
        if response.status_code >= 500:
            failures.append(f"{label}: {response.status_code} for {case.as_curl_command()}\n"
                            f"{response.text[:300]}")

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation without inputs: nothing to break
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_schemathesis_finds_no_server_errors(openapi, served):
    import requests

    schema = schemathesis.openapi.from_dict(openapi)
    counts: dict[str, int] = {}
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(result.ok(), mode, served.open.url, session, counts, failures)
    print("schemathesis cases:", json.dumps(counts, indent=1), "total", sum(counts.values()))
    assert not failures, "\n".join(failures[:10])
    assert sum(counts.values()) >= MIN_CASES, counts
    assert httpx.get(f"{served.open.url}/readyz", timeout=10).status_code == 200


# --- hostile input ---------------------------------------------------------------------------

JSON = {"content-type": "application/json"}
NESTED = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NESTED_OBJECT = b'{"texts": ["ok"], "x": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"
HOSTILE = [
    # (id, body, headers, expected status, text the answer must contain)
    ("oversized-declared", b'{"texts": ["' + b"a" * 2_000_000 + b'"]}', JSON, 413, "too large"),
    ("many-texts-over-limit", json.dumps({"texts": ["x"] * 10_000}).encode(), JSON, 400,
     "at most 64 items"),
    ("deeply-nested-array", NESTED, JSON, 400, ""),
    ("deeply-nested-object", NESTED_OBJECT, JSON, 400, ""),
    ("10k-char-text", json.dumps({"texts": ["y" * 10_000]}).encode(), JSON, 400,
     "at most 2000 characters"),
    ("invalid-utf8", b'{"texts": ["\xff\xfe\xfa caf\xe9"]}', JSON, 400, ""),
    ("invalid-utf8-bare", b"\xc3\x28\xa0\xa1", JSON, 400, ""),
    ("lone-surrogate-escape", b'{"texts": ["\\ud800 broken"]}', JSON, 400, ""),
    ("nul-and-controls", json.dumps({"texts": ["\x00\x01\x7f\u202e"]}).encode(), JSON, 200, ""),
    ("empty-body", b"", JSON, 400, ""),
    ("whitespace-body", b"   \n", JSON, 400, ""),
    ("json-null", b"null", JSON, 400, ""),
    ("json-number", b"1e99999", JSON, 400, ""),
    ("nan", b'{"texts": ["ok"], "all_scores": NaN}', JSON, 400, ""),
    ("text-plain", b'{"texts": ["ok"]}', {"content-type": "text/plain"}, 415, "application/json"),
    ("no-content-type", b'{"texts": ["ok"]}', {}, 415, "application/json"),
    ("multipart", b"--b\r\nContent-Disposition: form-data; name=\"texts\"\r\n\r\nhi\r\n--b--\r\n",
     {"content-type": "multipart/form-data; boundary=b"}, 415, "application/json"),
    ("xml", b"<texts><t>hi</t></texts>", {"content-type": "application/xml"}, 415, ""),
    ("bad-content-length", b'{"texts": ["ok"]}', {**JSON, "content-length": "abc"}, 400, ""),
]


@pytest.mark.parametrize(("body", "headers", "status", "message"),
                         [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_a_4xx_with_a_reason(served, body, headers, status, message):
    if "content-length" in headers:  # httpx would fix the header: send the bytes by hand
        code, text = _raw_post(served.open.url, body, headers)
    else:
        response = httpx.post(f"{served.open.url}/classify", content=body, headers=headers,
                              timeout=60)
        code, text = response.status_code, response.text
    assert code == status, text[:500]
    if status >= 400:
        assert text.strip(), "4xx without a reason"
        assert message in text
    assert httpx.get(f"{served.open.url}/healthz", timeout=10).status_code == 200


def _raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    parsed = urlparse(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST /classify HTTP/1.1\r\nhost: {parsed.netloc}\r\n{head}"
               "connection: close\r\n\r\n").encode() + body
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace")


def test_maximal_valid_request_is_served(client):
    response = client.post("/classify", json={"texts": ["z" * 2000] * 64, "all_scores": True})
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["predictions"]) == 64


def test_still_ready_after_the_abuse(served):
    """Runs after the tests above (file order): the service survived all of it."""
    for path in ("/readyz", "/healthz"):
        assert httpx.get(f"{served.open.url}{path}", timeout=10).status_code == 200
    assert served.open.proc.poll() is None
    response = httpx.post(f"{served.open.url}/classify", json={"texts": ["still fine"]}, timeout=30)
    assert response.status_code == 200


# --- security -----------------------------------------------------------------------------------


def test_api_key_never_appears_in_the_logs(served):
    """Right and wrong keys, good and bad requests: the key must not reach stdout/stderr."""
    url = served.keyed.url
    right = [{"authorization": f"Bearer {API_KEY}"}, {"x-api-key": API_KEY}]
    wrong = [{"authorization": f"Bearer {API_KEY}x"}, {"x-api-key": API_KEY[:-1]},
             {"authorization": API_KEY}, {"authorization": f"Basic {API_KEY}"}]
    for headers in right + wrong:
        for body in ({"texts": ["hi"]}, {"texts": []}, {"bad": 1}):
            httpx.post(f"{url}/classify", json=body, headers=headers, timeout=30)
        httpx.post(f"{url}/classify", content=b"{not json", headers={**headers, **JSON},
                   timeout=30)
        httpx.get(f"{url}/model", headers=headers, timeout=30)
        httpx.get(f"{url}/nowhere?key={API_KEY[:4]}", headers=headers, timeout=30)
    assert httpx.post(f"{url}/classify", json={"texts": ["hi"]}, headers=right[0],
                      timeout=30).status_code == 200
    log = served.keyed.log.read_text(errors="replace")
    assert "401" in log or "API key" in log, "the server's log was not captured"
    assert API_KEY not in log
    assert API_KEY[:-1] not in log  # no prefix of it either (the wrong keys above)


def test_models_load_from_safetensors_only(served):
    """The stored model has safetensors weights and nothing pickled; the service refuses others."""
    models = served.bentoml_home / "models"
    files = [p for p in models.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files), files
    pickled = [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}]
    assert not pickled, pickled
    # The classifier (the bento's model and job models alike) is loaded in bentos/classifiers.py.
    tree = ast.parse((ROOT / "bentos" / "classifiers.py").read_text())
    loads = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"
             and getattr(node.func.value, "id", "") == "AutoModelForSequenceClassification"]
    assert loads, "no model loading found in bentos/classifiers.py"
    for call in loads:
        flags = {k.arg: k.value for k in call.keywords}
        assert isinstance(flags.get("use_safetensors"), ast.Constant), ast.unparse(call)
        assert flags["use_safetensors"].value is True, ast.unparse(call)
    service = (ROOT / "bentos" / "service.py").read_text()
    assert "from_pretrained" not in service  # no second loading path beside classifiers.load
    for text in (service, (ROOT / "bentos" / "classifiers.py").read_text()):
        assert "torch.load" not in text


def test_service_source_is_checked_against_the_bento(served):
    """The bento under test was built from this tree's service (the checks above apply to it)."""
    built = list((served.bentoml_home / "bentos").rglob("src/service.py"))
    assert built and built[-1].read_text() == (ROOT / "bentos" / "service.py").read_text()

