"""The Stripe webhook receiver: signature vectors, then real HTTP requests on loopback."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.config import ConfigError, load_settings
from workbench.redact import contains_pan, redact_pan_bytes
from workbench.webhooks import (
    MAX_BODY_BYTES,
    SignatureError,
    check_signature,
    compute_signature,
    landing_dir,
    make_server,
    parse_signature_header,
    secrets_from_env,
    verify_signature,
)

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
VECTORS = json.loads((EXTERNAL / "stripe" / "webhook_signature_vectors.json").read_text())
EVENTS = EXTERNAL / "stripe" / "webhook_events"
SECRET = "whsec_test_secret_1"
PAN = "4242 4242 4242 4242"  # Luhn-valid test card number


def header_for(body: bytes, *secrets: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    return f"t={t}," + ",".join(f"v1={compute_signature(s, t, body)}" for s in secrets)


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("vector", VECTORS["fixed_vectors"], ids=lambda v: v["origin"][:40])
def test_fixed_vectors(vector: dict) -> None:
    secret, t, payload = vector["secret"], vector["t"], vector["payload"].encode()
    if "expected_v1" in vector:
        assert compute_signature(secret, t, payload) == vector["expected_v1"]
    signatures = vector.get("v1_list") or [vector.get("v1") or vector["expected_v1"]]
    header = f"t={t}," + ",".join(f"v1={s}" for s in signatures)
    if vector["valid"]:
        assert check_signature(payload, header, [secret], now=t) == (t, 0)
        # the signature is right, but "hello" is no event: verify_signature refuses the body
        with pytest.raises(SignatureError) as err:
            verify_signature(payload, header, [secret], now=t)
        assert err.value.reason == "body_not_json"
    else:
        with pytest.raises(SignatureError) as err:
            check_signature(payload, header, [secret], now=t)
        assert err.value.reason == "no_matching_signature"


@pytest.mark.parametrize("vector", VECTORS["parse_vectors"], ids=lambda v: v["origin"][:40])
def test_parse_vectors(vector: dict) -> None:
    t, signatures = parse_signature_header(vector["header"])
    assert t == vector["expected_t"]
    assert signatures == vector["expected_v1"]  # v0 ignored


def test_error_cases_listed_in_vectors_are_all_covered() -> None:
    # The vector file lists seven behaviours of Stripe's reference implementation; each has a
    # test below. If the file gains a case, this fails so that it gets a test too.
    assert len(VECTORS["error_cases_from_stripe_python_tests"]) == 7


EVENT = json.dumps(
    {"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1700000000}
)
NOW = 1_700_000_000


def test_malformed_header_has_no_timestamp() -> None:
    with pytest.raises(SignatureError) as err:
        verify_signature(EVENT, "i'm not even a real signature header", [SECRET], now=NOW)
    assert err.value.reason == "no_timestamp"
    assert "timestamp" in err.value.message
    with pytest.raises(SignatureError) as err:
        parse_signature_header("t=abc,v1=00")
    assert err.value.reason == "no_timestamp"


def test_only_v0_scheme_is_no_v1_signatures() -> None:
    v0 = compute_signature(SECRET, NOW, EVENT)
    with pytest.raises(SignatureError) as err:
        verify_signature(EVENT, f"t={NOW},v0={v0}", [SECRET], now=NOW)
    assert err.value.reason == "no_v1_signatures"


def test_bad_v1_is_no_matching_signature() -> None:
    with pytest.raises(SignatureError) as err:
        verify_signature(EVENT, f"t={NOW},v1=bad_signature", [SECRET], now=NOW)
    assert err.value.reason == "no_matching_signature"


def test_valid_signature_plus_extra_bad_v1_is_accepted() -> None:
    header = header_for(EVENT.encode(), SECRET, t=NOW) + ",v1=bad_signature"
    verified = verify_signature(EVENT, header, [SECRET], now=NOW)
    assert verified.event_id == "evt_1" and verified.type == "invoice.paid"
    assert verified.sha256 == hashlib.sha256(EVENT.encode()).hexdigest()


def test_timestamp_outside_tolerance_both_directions() -> None:
    body = EVENT.encode()
    # the reference case: t = now - 15 with tolerance 10
    with pytest.raises(SignatureError) as err:
        verify_signature(
            body, header_for(body, SECRET, t=NOW - 15), [SECRET], tolerance=10, now=NOW
        )
    assert err.value.reason == "timestamp_outside_tolerance"
    assert "old" in err.value.message
    # and the future, which Stripe's libraries let through but we do not
    with pytest.raises(SignatureError) as err:
        verify_signature(
            body, header_for(body, SECRET, t=NOW + 15), [SECRET], tolerance=10, now=NOW
        )
    assert err.value.reason == "timestamp_outside_tolerance"
    assert "future" in err.value.message
    # the edges are inside
    for t in (NOW - 300, NOW + 300):
        assert (
            verify_signature(body, header_for(body, SECRET, t=t), [SECRET], now=NOW).timestamp == t
        )
    for t in (NOW - 301, NOW + 301):
        with pytest.raises(SignatureError):
            verify_signature(body, header_for(body, SECRET, t=t), [SECRET], now=NOW)


def test_tolerance_none_accepts_any_timestamp() -> None:
    body = EVENT.encode()
    verified = verify_signature(body, header_for(body, SECRET, t=12345), [SECRET], tolerance=None)
    assert verified.timestamp == 12345


@pytest.mark.parametrize("kind", [str, bytes, bytearray])
def test_payload_may_be_str_bytes_or_bytearray(kind: type) -> None:
    text = json.dumps({"id": "evt_é", "type": "x"}, ensure_ascii=False)
    header = header_for(text.encode("utf-8"), SECRET, t=NOW)
    payload = text if kind is str else kind(text.encode("utf-8"))
    assert verify_signature(payload, header, [SECRET], now=NOW).event_id == "evt_é"


def test_no_header_and_no_secret_and_non_object_body() -> None:
    with pytest.raises(SignatureError) as err:
        verify_signature(EVENT, None, [SECRET], now=NOW)
    assert err.value.reason == "no_header"
    with pytest.raises(SignatureError) as err:
        verify_signature(EVENT, header_for(EVENT.encode(), SECRET, t=NOW), [], now=NOW)
    assert err.value.reason == "no_secrets"
    body = b"[1, 2]"
    with pytest.raises(SignatureError) as err:
        verify_signature(body, header_for(body, SECRET, t=NOW), [SECRET], now=NOW)
    assert err.value.reason == "body_not_object"


def test_rotation_accepts_any_configured_secret_and_says_which() -> None:
    body = EVENT.encode()
    old, new = "whsec_old", "whsec_new"
    assert (
        verify_signature(body, header_for(body, old, t=NOW), [new, old], now=NOW).secret_index == 1
    )
    assert (
        verify_signature(body, header_for(body, new, t=NOW), [new, old], now=NOW).secret_index == 0
    )
    # Stripe signs with both secrets during its own roll: two v1 entries
    assert (
        verify_signature(body, header_for(body, new, old, t=NOW), [old], now=NOW).secret_index == 0
    )
    with pytest.raises(SignatureError):
        verify_signature(body, header_for(body, "whsec_other", t=NOW), [new, old], now=NOW)


def test_secrets_from_env_splits_commas() -> None:
    assert secrets_from_env({"STRIPE_WEBHOOK_SECRET": " whsec_a, whsec_b ,,"}) == [
        "whsec_a",
        "whsec_b",
    ]
    assert secrets_from_env({}) == []


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(root=tmp_path, overrides={"data_dir": str(tmp_path / "data")})


class Running:
    def __init__(self, server) -> None:
        self.server = server
        self.url = server.url
        self.root = server.receiver.root

    def post(
        self,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        url: str | None = None,
        method: str = "POST",
    ) -> tuple[int, dict]:
        req = urllib.request.Request(
            url or self.url, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def landed(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*.json"))

    def rejections(self) -> list[dict]:
        log = self.server.receiver.rejected_log
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def running(settings) -> Iterator:
    servers = []

    def start(**kwargs) -> Running:
        kwargs.setdefault("secrets", [SECRET])
        server = make_server(0, settings=settings, **kwargs)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(server)
        return Running(server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def signed(body: bytes, *secrets: str, t: int | None = None) -> dict[str, str]:
    return {
        "Stripe-Signature": header_for(body, *(secrets or (SECRET,)), t=t),
        "Content-Type": "application/json; charset=utf-8",
    }


def test_valid_event_lands_byte_identical_before_200(running, settings) -> None:
    # One of the two fixtures in which redact.py finds nothing card-like (the others have
    # ids like cus_00000000000000, whose all-zero digit runs pass the Luhn check).
    body = (EVENTS / "setup_intent.created.json").read_bytes()
    assert redact_pan_bytes(body)[1] == 0
    event = json.loads(body)
    rx = running()
    status, answer = rx.post(body, signed(body))
    assert status == 200
    assert answer["id"] == event["id"] and answer["duplicate"] is False
    day = time.strftime("%Y-%m-%d", time.gmtime(event["created"]))
    path = landing_dir(settings) / day / f"{event['id']}.json"
    assert path.read_bytes() == body
    assert rx.landed() == [path]
    assert rx.rejections() == []


def test_invalid_signature_is_400_with_a_rejection_record_and_nothing_landed(running) -> None:
    body = json.dumps({"id": "evt_bad", "type": "charge.failed", "note": f"card {PAN}"}).encode()
    rx = running()
    status, answer = rx.post(body, signed(body, "whsec_wrong"))
    assert status == 400 and answer["error"] == "no_matching_signature"
    assert rx.landed() == []
    (record,) = rx.rejections()
    assert record["reason"] == "no_matching_signature"
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["size"] == len(body)
    assert record["remote"] == "127.0.0.1"
    raw_log = rx.server.receiver.rejected_log.read_text()
    assert not contains_pan(raw_log) and "evt_bad" not in raw_log  # never the body


def test_missing_header_and_non_json_body_are_recorded(running) -> None:
    rx = running()
    body = EVENT.encode()
    status, answer = rx.post(body, {"Content-Type": "application/json"})
    assert (status, answer["error"]) == (400, "no_header")
    junk = b"not json at all"
    status, answer = rx.post(junk, signed(junk))
    assert (status, answer["error"]) == (400, "body_not_json")
    assert [r["reason"] for r in rx.rejections()] == ["no_header", "body_not_json"]
    assert rx.landed() == []


def test_body_with_a_pan_is_stored_redacted(running) -> None:
    event = {
        "id": "evt_pan",
        "type": "customer.updated",
        "created": NOW,
        "data": {"object": {"description": f"paid with {PAN}"}},
    }
    body = json.dumps(event).encode()
    seen: list[tuple[dict, Path]] = []
    done = threading.Event()
    rx = running(on_event=lambda e, p: (seen.append((e, p)), done.set()))
    status, _ = rx.post(body, signed(body))  # signed over the raw body, PAN included
    assert status == 200
    (path,) = rx.landed()
    stored = path.read_text()
    assert not contains_pan(stored)
    assert "[REDACTED PAN ****4242]" in stored
    assert json.loads(stored)["id"] == "evt_pan"
    assert done.wait(5)
    (callback_event, callback_path) = seen[0]
    assert callback_path == path and not contains_pan(json.dumps(callback_event))


def test_pan_as_a_bare_json_number_is_stored_as_valid_redacted_json(running) -> None:
    rx = running()
    body = b'{"id": "evt_num", "type": "x", "created": 1700000000, "card": 4242424242424242}'
    assert rx.post(body, signed(body))[0] == 200
    (path,) = rx.landed()
    stored = json.loads(path.read_bytes())  # still JSON
    assert stored["card"] == "[REDACTED PAN ****4242]" and stored["id"] == "evt_num"


def test_rotation_over_http(running) -> None:
    rx = running(secrets=["whsec_new", "whsec_old"])
    for i, secret in enumerate(["whsec_old", "whsec_new"]):
        body = json.dumps({"id": f"evt_rot{i}", "type": "x", "created": NOW}).encode()
        assert rx.post(body, signed(body, secret))[0] == 200
    body = json.dumps({"id": "evt_rot9", "type": "x", "created": NOW}).encode()
    assert rx.post(body, signed(body, "whsec_retired"))[0] == 400
    assert [p.stem for p in rx.landed()] == ["evt_rot0", "evt_rot1"]


def test_tolerance_both_directions_over_http(running) -> None:
    rx = running()
    body = json.dumps({"id": "evt_time", "type": "x", "created": NOW}).encode()
    now = int(time.time())
    status, answer = rx.post(body, signed(body, t=now - 400))
    assert (status, answer["error"]) == (400, "timestamp_outside_tolerance")
    status, answer = rx.post(body, signed(body, t=now + 400))
    assert (status, answer["error"]) == (400, "timestamp_outside_tolerance")
    assert rx.landed() == []
    assert rx.post(body, signed(body, t=now - 250))[0] == 200
    assert rx.post(body, signed(body, t=now + 250))[0] == 200  # a duplicate by now
    reasons = [r["reason"] for r in rx.rejections()]
    assert reasons == ["timestamp_outside_tolerance"] * 2


def test_duplicate_delivery_is_idempotent(running) -> None:
    calls: list[str] = []
    rx = running(on_event=lambda e, p: calls.append(e["id"]))
    body = (EVENTS / "balance.available.json").read_bytes()
    assert redact_pan_bytes(body)[1] == 0
    first = rx.post(body, signed(body))
    # Stripe retries with a new signature timestamp over the same body
    second = rx.post(body, signed(body, t=int(time.time()) + 1))
    assert first[0] == second[0] == 200
    assert first[1]["duplicate"] is False and second[1]["duplicate"] is True
    assert first[1]["file"] == second[1]["file"]
    (path,) = rx.landed()
    assert path.read_bytes() == body
    time.sleep(0.2)  # on_event runs after the answer
    assert calls == [json.loads(body)["id"]]


def test_same_id_different_bytes_keeps_both(running) -> None:
    rx = running()
    a = json.dumps({"id": "evt_same", "type": "x", "created": NOW, "v": 1}).encode()
    b = json.dumps({"id": "evt_same", "type": "x", "created": NOW, "v": 2}).encode()
    assert rx.post(a, signed(a))[0] == 200
    status, answer = rx.post(b, signed(b))
    assert status == 200 and answer["duplicate"] is True
    first, variant = rx.landed()
    assert first.name == "evt_same.json" and first.read_bytes() == a
    assert variant.name.startswith("evt_same.variant-") and variant.read_bytes() == b


def test_event_without_id_is_named_by_sha256(running) -> None:
    rx = running()
    body = b'{"type": "ping"}'
    assert rx.post(body, signed(body))[0] == 200
    (path,) = rx.landed()
    assert path.stem == hashlib.sha256(body).hexdigest()


def test_on_event_error_is_logged_not_fatal(running, caplog) -> None:
    def boom(event: dict, path: Path) -> None:
        raise RuntimeError("decision engine down")

    rx = running(on_event=boom)
    body = json.dumps({"id": "evt_cb", "type": "x", "created": NOW}).encode()
    with caplog.at_level("ERROR", logger="workbench.webhooks"):
        assert rx.post(body, signed(body))[0] == 200
        time.sleep(0.2)
    assert [p.stem for p in rx.landed()] == ["evt_cb"]
    assert "on_event callback failed" in caplog.text


def test_wrong_path_method_and_size(running) -> None:
    rx = running(max_body_bytes=1024)
    body = EVENT.encode()
    base = rx.url.rsplit("/webhooks/stripe", 1)[0]
    assert rx.post(body, signed(body), url=base + "/webhooks/other")[0] == 404
    assert rx.post(b"", {}, method="PUT")[0] == 405
    req = urllib.request.Request(rx.url, method="GET")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405 and err.value.headers["Allow"] == "POST"
    big = b'{"id": "evt_big", "pad": "' + b"x" * 2000 + b'"}'
    status, answer = rx.post(big, signed(big))
    assert (status, answer["error"]) == (413, "body_too_large")
    assert rx.landed() == []
    assert [r["reason"] for r in rx.rejections()] == ["body_too_large"]
    assert MAX_BODY_BYTES == 1 << 20


def test_no_secret_configured_refuses_to_start(settings, monkeypatch) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        make_server(0, settings=settings)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_a,whsec_b")
    server = make_server(0, settings=settings)
    try:
        assert server.receiver.secrets == ["whsec_a", "whsec_b"]
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_the_rejection_log_is_not_ingested_as_events(running, settings) -> None:
    from workbench.ingest.landing import ingest_landing
    from workbench.store import Warehouse

    body = (EVENTS / "setup_intent.created.json").read_bytes()
    rx = running()
    assert rx.post(body, signed(body))[0] == 200
    junk = b"not json at all"
    assert rx.post(junk, signed(junk))[0] == 400
    assert rx.post(body, {"Content-Type": "application/json"})[0] == 400
    assert len(rx.rejections()) == 2
    ((source, report),) = ingest_landing(settings, progress=False)
    totals = report.totals()
    assert source == "webhook" and (totals["received"], totals["quarantined"]) == (1, 0)
    assert len(report.files) == 1
    with Warehouse(settings).read(step="test") as con:
        assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
        files = [r[0] for r in con.execute("SELECT source_file FROM loads").fetchall()]
    assert not any("rejected" in f for f in files)  # the senders' addresses stay out of the lake
    assert not any("rejected" in str(p) for p in (settings.data_dir / "lake").rglob("*"))
    # the log is beside the landing folder, not in it
    assert (
        rx.server.receiver.rejected_log == settings.data_dir / "landing" / "webhooks-rejected.jsonl"
    )
    assert not list(rx.root.rglob("*.jsonl"))


def test_a_rejection_log_left_in_the_landing_folder_is_not_ingested(settings) -> None:
    """Landing folders from before the log moved out keep ``rejected.jsonl`` among the
    bodies: ingest still leaves it out."""
    from workbench.ingest.landing import ingest_landing
    from workbench.webhooks import REJECTED_LOG, landing_dir

    day = landing_dir(settings) / "2026-01-01"
    day.mkdir(parents=True)
    (day / "evt_1.json").write_bytes((EVENTS / "setup_intent.created.json").read_bytes())
    old = {"remote": "10.0.0.1", "reason": "no_header", "sha256": None, "size": 3}
    (landing_dir(settings) / REJECTED_LOG).write_text(json.dumps(old) + "\n")
    ((source, report),) = ingest_landing(settings, progress=False)
    assert source == "webhook" and report.totals()["received"] == 1
    assert [Path(f.path).name for f in report.files] == ["evt_1.json"]
