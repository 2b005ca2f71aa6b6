"""aigov: a client for the aigov gateway's HTTP authorize API.

Standard library only (Python 3.8+). Every call is a governed aigov request:
it is verified (OIDC), decided (Cedar) and audited by aigov; the gateway and
this client decide nothing.

    import aigov
    client = aigov.Client("http://127.0.0.1:8090", token_file=".run/tokens/alice.jwt")
    d = client.authorize("model.retrain", aigov.Resource("Model", "fraud-detector"),
                         context={"environment": "staging"})
    if not d.allowed:
        raise SystemExit(f"denied: {d.code}: {d.reason}")

A deny is a Decision, not an exception. Exceptions (AigovError and its
subclasses) mean no decision was received: never treat one as an allow.
The API is documented in schemas/openapi/gateway.yaml and docs/gateway.md.
"""

import json
import random
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

__all__ = [
    "Client",
    "Resource",
    "Decision",
    "AigovError",
    "BadRequest",
    "Unauthorized",
    "Conflict",
    "Unavailable",
    "DecisionTimeout",
]

#: Statuses retried with the same request id (the same request, so safe).
RETRYABLE = (502, 503, 504)


@dataclass(frozen=True)
class Resource:
    """The object an action applies to, e.g. Resource("Model", "fraud-detector")."""

    type: str
    id: str

    def __str__(self) -> str:
        return '%s::"%s"' % (self.type, self.id)


@dataclass(frozen=True)
class Decision:
    """aigov's decision: allow or deny, with the deny code and the policies."""

    request_id: str
    decision: str
    code: str = ""
    reason: str = ""
    stage: str = ""
    policy_ids: List[str] = field(default_factory=list)
    policy_version: str = ""
    principal: Optional[Dict[str, Any]] = None
    #: The approval request an approval_required deny opened; once it is
    #: approved (aigov approvals approve <id>), retry the same request.
    approval_id: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Decision":
        if body.get("decision") not in ("allow", "deny") or not body.get("request_id"):
            raise AigovError(200, "bad_response", "the gateway answered 200 without a decision")
        return cls(
            request_id=body["request_id"],
            decision=body["decision"],
            code=body.get("code", "") or "",
            reason=body.get("reason", "") or "",
            stage=body.get("stage", "") or "",
            policy_ids=list(body.get("policy_ids") or []),
            policy_version=body.get("policy_version", "") or "",
            principal=body.get("principal"),
            approval_id=body.get("approval_id", "") or "",
            raw=body,
        )


class AigovError(Exception):
    """No decision was received. `code` is the gateway's machine-readable error."""

    def __init__(self, status: int, code: str, message: str, request_id: str = ""):
        super().__init__("%s (HTTP %d): %s" % (code, status, message))
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class BadRequest(AigovError):
    """400/405/413/415: the request itself is wrong; fix it, do not retry."""


class Unauthorized(AigovError):
    """401: no bearer token was sent."""


class Conflict(AigovError):
    """409: the request id was already used for a different request."""


class Unavailable(AigovError):
    """502/503 or a network error: the gateway or the bus could not take the request."""


class DecisionTimeout(Unavailable):
    """504: no decision in time. Nothing is allowed; retrying with the same id is safe."""


def _error_for(status: int, body: Dict[str, Any]) -> AigovError:
    code = str(body.get("error") or "http_%d" % status)
    msg = str(body.get("message") or "")
    rid = str(body.get("request_id") or "")
    if status == 401:
        return Unauthorized(status, code, msg, rid)
    if status == 409:
        return Conflict(status, code, msg, rid)
    if status == 504:
        return DecisionTimeout(status, code, msg, rid)
    if status in (502, 503):
        return Unavailable(status, code, msg, rid)
    if 400 <= status < 500:
        return BadRequest(status, code, msg, rid)
    return AigovError(status, code, msg, rid)


TokenSource = Union[str, Callable[[], str]]


class Client:
    """A client of one gateway.

    token: the caller's OIDC token, or a callable returning a fresh one;
    token_file: read the token from this file at every call instead.
    timeout: seconds per HTTP attempt (should exceed the gateway's
    AIGOV_GATEWAY_DECISION_TIMEOUT, 5 s by default).
    retries: further attempts on 502/503/504 and network errors, each with
    the same request id, so a retry is the same request and never a second one.
    """

    def __init__(
        self,
        base_url: str,
        token: Optional[TokenSource] = None,
        token_file: Optional[str] = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_response_bytes: int = 1 << 20,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL, got %r" % base_url)
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if retries < 0 or timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._token_file = token_file
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_response_bytes = max_response_bytes

    def _bearer(self) -> str:
        if self._token_file is not None:
            with open(self._token_file, encoding="ascii") as f:
                return f.read().strip()
        if callable(self._token):
            return self._token().strip()
        return (self._token or "").strip()

    def authorize(
        self,
        action: str,
        resource: Resource,
        context: Optional[Dict[str, Any]] = None,
        request_id: Optional[str] = None,
    ) -> Decision:
        """Ask aigov whether the token's principal may do action on resource.

        Returns the Decision (allow or deny). Raises AigovError when no
        decision was received after the retries.
        """
        rid = request_id or str(uuid.uuid4())
        body: Dict[str, Any] = {"id": rid, "action": action, "resource": {"type": resource.type, "id": resource.id}}
        if context:
            body["context"] = context
        data = json.dumps(body).encode("utf-8")
        attempt = 0
        while True:
            try:
                return self._post(data)
            except Unavailable as e:
                if attempt >= self.retries:
                    raise
                attempt += 1
                # Jittered exponential backoff; the same id every time.
                time.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))

    def _post(self, data: bytes) -> Decision:
        req = urllib.request.Request(self.base_url + "/v1/authorize", data=data, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        token = self._bearer()
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Decision.from_json(self._read_json(resp, resp.status))
        except urllib.error.HTTPError as e:
            with e:
                raise _error_for(e.code, self._read_json(e, e.code)) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable(0, "gateway_unreachable", "cannot reach %s: %s" % (self.base_url, reason)) from None

    def _read_json(self, resp: Any, status: int) -> Dict[str, Any]:
        raw = resp.read(self.max_response_bytes + 1)
        if len(raw) > self.max_response_bytes:
            raise AigovError(status, "bad_response", "the gateway's answer is larger than %d bytes" % self.max_response_bytes)
        try:
            body = json.loads(raw.decode("utf-8") or "{}")
        except ValueError:
            raise AigovError(status, "bad_response", "the gateway answered %d with a body that is not JSON" % status) from None
        if not isinstance(body, dict):
            raise AigovError(status, "bad_response", "the gateway answered %d with JSON that is not an object" % status)
        return body
