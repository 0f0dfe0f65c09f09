"""Receive Stripe webhooks on localhost and land them durably, byte for byte.

``workbench receive --port P`` serves ``POST /webhooks/stripe``. Each request is
checked as Stripe specifies for the ``Stripe-Signature`` header: the header is
``t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]``; the expected signature is
``hex(HMAC-SHA256(key=endpoint_secret, msg=f"{t}.{raw_body}"))``; the request is
genuine when *any* ``v1`` matches (constant-time compare) for *any* configured
secret (several are accepted while a secret is being rotated); and ``t`` must be
within ``tolerance`` seconds of now. Stripe's own libraries check only that ``t``
is not too old; we also refuse a ``t`` too far in the future, so a leaked signature
cannot be replayed later. Secrets come from ``STRIPE_WEBHOOK_SECRET``
(comma-separated), as Stripe's tools name it.

A verified body is PAN-redacted (:func:`workbench.redact.redact_pan_bytes`), then
written atomically and fsynced to
``<data_dir>/landing/webhooks/<yyyy-mm-dd>/<event id>.json`` (the day is the event's
``created`` day in UTC, so a retry on another day lands in the same file; a body
without an id is named by its sha256). Only then does the receiver answer 200.
A second delivery of the same event id answers 200 and changes nothing (with other bytes,
it is kept beside the first as ``<id>.variant-<hash>.json``, unless ``workbench erase``
rewrote the first: then the delivery would bring back what was erased, and nothing of it is
kept). The signature is checked here, once: the header is not stored, so a landed file is
never verified again (and may be rewritten by an erasure). A rejected
request gets a 400 naming the reason, and one JSON line (time, remote address,
reason, sha256 and size of the body, never the body) is appended durably to
``<data_dir>/landing/webhooks-rejected.jsonl``, beside the landing folder, not in it (it is
not an event: ingest reads the folder).

Example:
    >>> server = make_server(0, secrets=["whsec_test"])      # port 0: any free port
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> server.url
    'http://127.0.0.1:54321/webhooks/stripe'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workbench.config import ConfigError, Settings, load_settings
from workbench.redact import redact_pan, redact_pan_bytes
from workbench.store import atomic_write_bytes

log = logging.getLogger(__name__)

SECRET_ENV = "STRIPE_WEBHOOK_SECRET"
WEBHOOK_PATH = "/webhooks/stripe"
DEFAULT_TOLERANCE_S = 300
MAX_BODY_BYTES = 1 << 20  # 1 MiB; Stripe events are far smaller
SIGNATURE_SCHEME = "v1"

# Event ids become file names: only ids made of these characters are used as is.
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-]{1,200}")

OnEvent = Callable[[dict[str, Any], Path], None]


class SignatureError(ValueError):
    """A webhook request failed verification.

    Attributes:
        reason: A short stable code (``no_header``, ``no_timestamp``, ``no_v1_signatures``,
            ``no_secrets``, ``no_matching_signature``, ``timestamp_outside_tolerance``,
            ``body_not_json``, ``body_not_object``).
        message: What is wrong, in words.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class VerifiedEvent:
    """A request whose signature checked out.

    Attributes:
        event: The parsed JSON body (not yet redacted).
        event_id: ``event["id"]`` when it is a string, else None.
        type: ``event["type"]`` when it is a string, else None.
        timestamp: The signed ``t`` (unix seconds).
        secret_index: Which configured secret matched (0 = the first); during a
            rotation this tells when senders have moved to the new secret.
        sha256: Hex sha256 of the raw body.
    """

    event: dict[str, Any]
    event_id: str | None
    type: str | None
    timestamp: int
    secret_index: int
    sha256: str


# --------------------------------------------------------------------------- pure functions


def _as_bytes(payload: bytes | bytearray | str) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """Split a ``Stripe-Signature`` header into its timestamp and its ``v1`` signatures.

    Items are separated by ``,`` and each is ``key=value`` (split at the first ``=``);
    schemes other than ``v1`` (e.g. ``v0``) are ignored, as Stripe's libraries do.

    Args:
        header: The header value, e.g. ``"t=1492774577,v1=5257a8…,v0=6ffbb5…"``.

    Returns:
        ``(t, [v1, ...])``; the list is empty when the header has no ``v1`` item.

    Raises:
        SignatureError: ``no_header`` for an empty header, ``no_timestamp`` when there is
            no ``t`` item or it is not an integer.
    """
    if not header or not header.strip():
        raise SignatureError("no_header", "the Stripe-Signature header is empty")
    t: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                raise SignatureError(
                    "no_timestamp",
                    f"unable to extract timestamp and signatures from header: t={value[:40]!r} "
                    "is not an integer",
                ) from None
        elif key == SIGNATURE_SCHEME:
            signatures.append(value)
    if t is None:
        raise SignatureError(
            "no_timestamp", "unable to extract timestamp and signatures from header: no t=…"
        )
    return t, signatures


def compute_signature(secret: str, t: int, payload: bytes | bytearray | str) -> str:
    """Hex HMAC-SHA256 of ``f"{t}.{payload}"`` keyed with the endpoint secret (the whole
    ``whsec_…`` string, as Stripe uses it)."""
    message = str(int(t)).encode("ascii") + b"." + _as_bytes(payload)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def check_signature(
    payload: bytes | bytearray | str,
    header: str | None,
    secrets: Sequence[str],
    *,
    tolerance: int | None = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> tuple[int, int]:
    """Check a ``Stripe-Signature`` header against a raw body (the signature step only).

    In Stripe's order: the header parses, it carries ``v1`` signatures, one of them matches
    one of the secrets, and ``t`` is within ``tolerance`` of ``now`` in both directions.

    Args:
        payload: The raw request body exactly as received.
        header: The ``Stripe-Signature`` header value (None when absent).
        secrets: Endpoint secrets to accept (more than one during a rotation).
        tolerance: Allowed ``|now - t|`` in seconds; None disables the check.
        now: Current unix time (default: ``time.time()``).

    Returns:
        ``(t, secret_index)``: the signed timestamp and which secret matched.

    Raises:
        SignatureError: ``no_header``, ``no_timestamp``, ``no_v1_signatures``, ``no_secrets``,
            ``no_matching_signature`` or ``timestamp_outside_tolerance``.
    """
    if header is None or not header.strip():
        raise SignatureError("no_header", "no Stripe-Signature header on the request")
    t, signatures = parse_signature_header(header)
    if not signatures:
        raise SignatureError(
            "no_v1_signatures", "no signatures found with expected scheme v1 in the header"
        )
    usable = [s for s in secrets if s]
    if not usable:
        raise SignatureError("no_secrets", f"no webhook secret configured (set {SECRET_ENV})")
    body = _as_bytes(payload)
    matched: int | None = None
    for index, secret in enumerate(usable):
        expected = compute_signature(secret, t, body).encode("ascii")
        for candidate in signatures:
            # compare_digest takes time independent of where the inputs differ
            if hmac.compare_digest(expected, candidate.encode("utf-8", "replace")):
                matched = index if matched is None else matched
    if matched is None:
        raise SignatureError(
            "no_matching_signature",
            "no signatures found matching the expected signature for payload "
            f"(checked {len(signatures)} v1 signature(s) against {len(usable)} secret(s))",
        )
    if tolerance is not None:
        current = time.time() if now is None else now
        skew = current - t
        if abs(skew) > tolerance:
            direction = "old" if skew > 0 else "in the future"
            raise SignatureError(
                "timestamp_outside_tolerance",
                f"timestamp outside the tolerance zone: t={t} is {abs(skew):.0f} s {direction} "
                f"(tolerance {tolerance} s)",
            )
    return t, matched


def verify_signature(
    payload: bytes | bytearray | str,
    header: str | None,
    secrets: Sequence[str],
    *,
    tolerance: int | None = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> VerifiedEvent:
    """Verify a Stripe webhook request and parse its body.

    Runs :func:`check_signature`, then requires the body to be a JSON object.

    Args:
        payload: The raw request body exactly as received.
        header: The ``Stripe-Signature`` header value (None when absent).
        secrets: Endpoint secrets to accept (more than one during a rotation).
        tolerance: Allowed ``|now - t|`` in seconds; None disables the check.
        now: Current unix time (default: ``time.time()``).

    Returns:
        The verified event.

    Raises:
        SignatureError: With a ``reason`` code saying what failed (those of
            :func:`check_signature`, then ``body_not_json`` or ``body_not_object``).
    """
    t, matched = check_signature(payload, header, secrets, tolerance=tolerance, now=now)
    body = _as_bytes(payload)
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError("body_not_json", f"the body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise SignatureError(
            "body_not_object", f"the body is JSON but a {type(event).__name__}, not an event object"
        )
    event_id = event.get("id") if isinstance(event.get("id"), str) else None
    event_type = event.get("type") if isinstance(event.get("type"), str) else None
    return VerifiedEvent(
        event=event,
        event_id=event_id,
        type=event_type,
        timestamp=t,
        secret_index=matched,
        sha256=hashlib.sha256(body).hexdigest(),
    )


def secrets_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The endpoint secrets in ``$STRIPE_WEBHOOK_SECRET``, split on commas."""
    raw = (environ if environ is not None else os.environ).get(SECRET_ENV, "")
    return [s.strip() for s in raw.split(",") if s.strip()]


#: The name of the receiver's log of rejected requests in landing folders written before it
#: moved beside the folder (:func:`rejected_log_for`); not a body: ``ingest`` still leaves a
#: file of this name in a webhook folder out (it holds senders' addresses, never an event).
REJECTED_LOG = "rejected.jsonl"


def rejected_log_for(root: Path) -> Path:
    """The receiver's log of rejected requests for the landing folder ``root``:
    ``<root>-rejected.jsonl`` beside it (``<data_dir>/landing/webhooks-rejected.jsonl``),
    outside the folder that ingest reads."""
    root = Path(root)
    return root.with_name(f"{root.name}-rejected.jsonl")


def landing_dir(settings: Settings) -> Path:
    """``<data_dir>/landing/webhooks``: where verified events land."""
    return Path(settings.data_dir) / "landing" / "webhooks"


def erased_landing(settings: Settings) -> Callable[[bytes], bool]:
    """A test of a landed file's bytes: are they what ``workbench erase`` rewrote a landing
    file to (a ``new_sha256`` of a ``landing_file`` entry of the lake's erasure log)?"""
    from workbench.ingest.lake import Lake

    lake = Lake(Path(settings.data_dir) / "lake")

    def erased(data: bytes) -> bool:
        sha = hashlib.sha256(data).hexdigest()
        return any(e.get("landing_file") and e.get("new_sha256") == sha for e in lake.erasures())

    return erased


def landing_path(root: Path, *, event: dict[str, Any], sha256: str, received_at: datetime) -> Path:
    """The file an event lands in: ``<root>/<yyyy-mm-dd>/<id or sha256>.json``.

    The day is the event's ``created`` day in UTC when it has one (so a retry on a later
    day finds the same file), else the day it was received.
    """
    created = event.get("created")
    day = received_at
    if isinstance(created, int) and not isinstance(created, bool):
        try:
            day = datetime.fromtimestamp(created, UTC)
        except (OverflowError, OSError, ValueError):
            day = received_at
    event_id = event.get("id")
    name = event_id if isinstance(event_id, str) and _SAFE_ID.fullmatch(event_id) else sha256
    return root / day.strftime("%Y-%m-%d") / f"{name}.json"


# --------------------------------------------------------------------------- the receiver


def _redact_values(value: Any) -> Any:
    """A copy of parsed JSON with card numbers redacted in every string and integer."""
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_values(v) for v in value]
    if isinstance(value, str):
        return redact_pan(value)
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        redacted = redact_pan(text)
        return value if redacted == text else redacted
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Outcome:
    """What the receiver did with one request (also the HTTP answer)."""

    status: int
    body: dict[str, Any]
    path: Path | None = None
    event: dict[str, Any] | None = None
    new: bool = False


class WebhookReceiver:
    """Verifies, lands and records webhook requests; independent of HTTP so it can be tested
    and reused (e.g. behind another server).

    Args:
        root: Landing folder (``<data_dir>/landing/webhooks``).
        secrets: Accepted endpoint secrets.
        tolerance: Timestamp tolerance in seconds (None: no check).
        max_body_bytes: Larger bodies are refused with 413.
        on_event: Called as ``on_event(event, path)`` after a new event is durably written;
            ``event`` is the parsed, PAN-redacted body. Errors are logged, never raised.
        clock: Returns the current unix time (tests may pin it).
        erased: Tells whether the bytes of a landed file are what ``workbench erase`` rewrote
            it to (a re-delivery of that event is then not kept); none: never.
    """

    def __init__(
        self,
        root: Path,
        *,
        secrets: Sequence[str],
        tolerance: int | None = DEFAULT_TOLERANCE_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        on_event: OnEvent | None = None,
        clock: Callable[[], float] = time.time,
        erased: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.root = Path(root)
        self.erased = erased
        self.secrets = [s for s in secrets if s]
        if not self.secrets:
            raise ConfigError(
                f"No Stripe webhook secret: set {SECRET_ENV} to the endpoint's signing secret "
                "(whsec_…; several separated by commas during a rotation)."
            )
        self.tolerance = tolerance
        self.max_body_bytes = max_body_bytes
        self.on_event = on_event
        self.clock = clock
        self.rejected_log = rejected_log_for(self.root)
        self._lock = threading.Lock()

    # -- records

    def record_rejection(
        self,
        *,
        remote: str,
        reason: str,
        message: str,
        body: bytes | None,
        size: int,
        path: str = WEBHOOK_PATH,
    ) -> None:
        """Append one line to the rejection log (:func:`rejected_log_for`) and fsync it.
        The body itself is never written: only its sha256 and size."""
        record = {
            "received_at": datetime.fromtimestamp(self.clock(), UTC).isoformat(
                timespec="microseconds"
            ),
            "remote": remote,
            "path": path,
            "reason": reason,
            "message": message,
            "sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
            "size": size,
        }
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        # the message never holds body text, but redact anyway: nothing card-like is written
        line, _ = redact_pan_bytes(line)
        with self._lock:
            self.rejected_log.parent.mkdir(parents=True, exist_ok=True)
            created = not self.rejected_log.exists()
            fd = os.open(self.rejected_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.rejected_log.parent)
        log.warning("rejected webhook from %s: %s (%s)", remote, reason, message)

    # -- handling

    def handle(self, body: bytes, signature: str | None, *, remote: str) -> Outcome:
        """Verify one request body and land it; returns the HTTP status and answer."""
        try:
            verified = verify_signature(
                body, signature, self.secrets, tolerance=self.tolerance, now=self.clock()
            )
        except SignatureError as exc:
            self.record_rejection(
                remote=remote, reason=exc.reason, message=exc.message, body=body, size=len(body)
            )
            return Outcome(400, {"error": exc.reason, "message": exc.message})

        redacted, n_pans = redact_pan_bytes(body)
        event = verified.event
        if n_pans:
            log.warning(
                "event %s carried %d card number(s); stored redacted", verified.event_id, n_pans
            )
            try:
                event = json.loads(redacted)
            except json.JSONDecodeError:
                # a card number written as a bare JSON number: the text redaction broke the
                # JSON, so store the parsed event with its values redacted instead
                event = _redact_values(verified.event)
                redacted = json.dumps(event, ensure_ascii=False).encode("utf-8")
        received_at = datetime.fromtimestamp(self.clock(), UTC)
        path = landing_path(self.root, event=event, sha256=verified.sha256, received_at=received_at)
        new = True
        with self._lock:
            if path.exists():
                new = False
                landed = path.read_bytes()
                if landed != redacted and self.erased is not None and self.erased(landed):
                    log.warning(
                        "event %s delivered again after an erasure rewrote %s; not kept",
                        verified.event_id,
                        path.name,
                    )
                elif landed != redacted:
                    # Same id, different bytes: keep the first as the event and this one beside
                    # it, so nothing received is lost.
                    variant = path.with_name(
                        f"{path.stem}.variant-{hashlib.sha256(redacted).hexdigest()[:16]}.json"
                    )
                    if not variant.exists():
                        atomic_write_bytes(variant, redacted)
                    log.warning(
                        "event %s delivered again with different bytes; kept as %s",
                        verified.event_id,
                        variant.name,
                    )
            else:
                atomic_write_bytes(path, redacted)
        answer = {
            "received": True,
            "id": verified.event_id,
            "type": verified.type,
            "duplicate": not new,
            "file": str(path.relative_to(self.root)),
        }
        log.info(
            "%s webhook %s (%s) from %s -> %s",
            "landed" if new else "duplicate",
            verified.event_id,
            verified.type,
            remote,
            path,
        )
        return Outcome(200, answer, path=path, event=event, new=new)

    def notify(self, outcome: Outcome) -> None:
        """Call ``on_event`` for a newly landed event; its errors are logged and swallowed."""
        if (
            self.on_event is None
            or not outcome.new
            or outcome.event is None
            or outcome.path is None
        ):
            return
        try:
            self.on_event(outcome.event, outcome.path)
        except Exception:
            log.exception(
                "on_event callback failed for %s (the event is safely landed)", outcome.path
            )


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (~40 ms on Linux). TCP_NODELAY sends both at once.
    disable_nagle_algorithm = True
    timeout = 30  # seconds a client may take to send its request
    server_version = "workbench-webhooks"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, body: dict[str, Any], *, close: bool = False) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "POST")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _path_ok(self) -> bool:
        return urlsplit(self.path).path.rstrip("/") == WEBHOOK_PATH

    def _not_post(self) -> None:
        # close: a body we did not read must not be taken for the next request
        if not self._path_ok():
            self._answer(
                404, {"error": "not_found", "message": f"POST to {WEBHOOK_PATH}"}, close=True
            )
        else:
            self._answer(405, {"error": "method_not_allowed", "message": "use POST"}, close=True)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_post  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        receiver = self.server.receiver
        remote = self.client_address[0]
        length_header = self.headers.get("Content-Length")
        if not self._path_ok():
            self._answer(
                404, {"error": "not_found", "message": f"POST to {WEBHOOK_PATH}"}, close=True
            )
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length_header is None:
            receiver.record_rejection(
                remote=remote,
                reason="length_required",
                message="no Content-Length",
                body=None,
                size=0,
            )
            self._answer(
                411, {"error": "length_required", "message": "send a Content-Length"}, close=True
            )
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            receiver.record_rejection(
                remote=remote,
                reason="bad_length",
                message=f"Content-Length {length_header[:40]!r} is not a byte count",
                body=None,
                size=0,
            )
            self._answer(400, {"error": "bad_length", "message": "bad Content-Length"}, close=True)
            return
        if length > receiver.max_body_bytes:
            message = f"body of {length} bytes exceeds the limit of {receiver.max_body_bytes}"
            receiver.record_rejection(
                remote=remote, reason="body_too_large", message=message, body=None, size=length
            )
            self._answer(413, {"error": "body_too_large", "message": message}, close=True)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            receiver.record_rejection(
                remote=remote,
                reason="truncated_body",
                message=f"expected {length} bytes, got {len(body)}",
                body=body,
                size=len(body),
            )
            self._answer(
                400,
                {"error": "truncated_body", "message": "body shorter than Content-Length"},
                close=True,
            )
            return
        try:
            outcome = receiver.handle(body, self.headers.get("Stripe-Signature"), remote=remote)
        except Exception:
            # Landing failed (disk full, permissions): answer 500 so Stripe retries later.
            log.exception("could not land a webhook from %s", remote)
            self._answer(500, {"error": "landing_failed", "message": "try again later"})
            return
        self._answer(outcome.status, outcome.body)
        receiver.notify(outcome)


class WebhookServer(ThreadingHTTPServer):
    """A threading HTTP server carrying a :class:`WebhookReceiver`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The full URL of the webhook endpoint."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{WEBHOOK_PATH}"


def make_server(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    settings: Settings | None = None,
    secrets: Sequence[str] | None = None,
    on_event: OnEvent | None = None,
    tolerance: int | None = DEFAULT_TOLERANCE_S,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock: Callable[[], float] = time.time,
) -> WebhookServer:
    """Build (and bind) the webhook server without starting it.

    Args:
        port: TCP port; 0 picks a free one (see ``server.server_address``).
        host: Interface to bind; loopback by default.
        settings: Gives ``data_dir``; :func:`load_settings` when omitted.
        secrets: Endpoint secrets; ``$STRIPE_WEBHOOK_SECRET`` (comma-separated) when omitted.
        on_event: Optional ``on_event(event, path)`` called after each new event is landed.
        tolerance: Timestamp tolerance in seconds.
        max_body_bytes: Body size limit (413 above it).
        clock: Current unix time (for tests).

    Returns:
        The bound server; run it with ``serve_forever()`` and stop it with ``shutdown()``.

    Raises:
        ConfigError: No secret configured.
    """
    settings = settings or load_settings()
    receiver = WebhookReceiver(
        landing_dir(settings),
        secrets=list(secrets) if secrets is not None else secrets_from_env(),
        tolerance=tolerance,
        max_body_bytes=max_body_bytes,
        on_event=on_event,
        clock=clock,
        erased=erased_landing(settings),
    )
    return WebhookServer((host, port), receiver)


def serve(
    port: int,
    *,
    host: str = "127.0.0.1",
    settings: Settings | None = None,
    secrets: Sequence[str] | None = None,
    on_event: OnEvent | None = None,
) -> None:
    """Serve the webhook endpoint until interrupted (what ``workbench receive`` runs)."""
    server = make_server(port, host=host, settings=settings, secrets=secrets, on_event=on_event)
    log.info(
        "receiving Stripe webhooks at %s (%d secret(s)); landing in %s",
        server.url,
        len(server.receiver.secrets),
        server.receiver.root,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping the webhook receiver")
    finally:
        server.server_close()
