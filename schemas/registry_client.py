"""A client of a Confluent-compatible schema registry (FLOWPROOF_SCHEMA_REGISTRY_URL).

Speaks the Confluent REST API that Confluent Schema Registry, Apicurio Registry (under
`/apis/ccompat/v7`) and Karapace serve: register a schema under a subject, look a schema up by
id, read and set a subject's compatibility level, ask whether a schema is compatible with a
subject. Transport failures, timeouts, 5xx answers and refused credentials become
`ComponentUnreachable("schema-registry", ...)` here, the one boundary; a schema the registry
refuses (incompatible, invalid) becomes `SchemaRefused`, a contract error whose reason parks the
event.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

import httpx

from flowproof.core.config import Settings
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.redact import scrub
from flowproof.schemas.errors import ContractError

COMPONENT = "schema-registry"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# A connect failure is retried by the transport this many times before it counts as unreachable.
CONNECT_RETRIES = 2


class SchemaRefused(ContractError):
    """The registry refused to register a schema under a subject (incompatible or invalid)."""

    reason = "schema_refused"

    def __init__(self, subject: str, status: int, detail: str) -> None:
        super().__init__(f"schema registry refused the schema under subject {subject!r}: {detail}")
        self.subject = subject
        self.status = status
        self.detail = detail


def subject_path(subject: str) -> str:
    return quote(subject, safe="")


class RegistryClient:
    """Requests to one registry, each with the timeout; the HTTP client opens on first use."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        client_cert: tuple[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._auth = httpx.BasicAuth(username, password or "") if username is not None else None
        self._cafile = cafile
        self._client_cert = client_cert  # (certificate, key) PEM files, for mutual TLS
        self._http: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryClient | None:
        """The client of FLOWPROOF_SCHEMA_REGISTRY_URL, or None when it is not set."""
        if settings.schema_registry_url is None:
            return None
        password = settings.schema_registry_password
        cafile = settings.schema_registry_ssl_cafile
        cert, key = settings.schema_registry_ssl_certfile, settings.schema_registry_ssl_keyfile
        return cls(
            settings.schema_registry_url.get_secret_value(),
            timeout=settings.schema_registry_timeout_seconds,
            username=settings.schema_registry_username,
            password=password.get_secret_value() if password is not None else None,
            cafile=str(cafile) if cafile is not None else None,
            client_cert=(str(cert), str(key)) if cert is not None and key is not None else None,
        )

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self._cafile is not None or self._client_cert is not None:
                verify = ssl.create_default_context(cafile=self._cafile)
                if self._client_cert is not None:
                    verify.load_cert_chain(*self._client_cert)
            self._http = httpx.AsyncClient(
                base_url=self.url,
                auth=self._auth,
                timeout=self._timeout,
                headers={"Accept": f"{CONTENT_TYPE}, application/json"},
                transport=httpx.AsyncHTTPTransport(verify=verify, retries=CONNECT_RETRIES),
            )
        return self._http

    async def aclose(self) -> None:
        """Close the connections (a later request opens new ones)."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """(status, JSON body) of a 2xx or 4xx answer; ComponentUnreachable for anything else."""
        try:
            response = await self._client().request(
                method,
                path,
                json=body,
                headers={"Content-Type": CONTENT_TYPE} if body is not None else None,
            )
        except httpx.TimeoutException:
            raise ComponentUnreachable(
                COMPONENT,
                f"no answer from {scrub(self.url)} within {self._timeout:g}s "
                "(FLOWPROOF_SCHEMA_REGISTRY_TIMEOUT_SECONDS)",
            ) from None
        except (httpx.HTTPError, OSError) as exc:
            # OSError: an ssl.SSLError that httpx passes on as it is, e.g. a TLS 1.3 server's
            # "certificate required" alert, which arrives with the answer, after the handshake.
            raise ComponentUnreachable(COMPONENT, f"{scrub(self.url)}: {_cause(exc)}") from None
        status = response.status_code
        if status in (401, 403):
            raise ComponentUnreachable(
                COMPONENT,
                f"{scrub(self.url)} refused the credentials (HTTP {status}); check "
                "FLOWPROOF_SCHEMA_REGISTRY_USERNAME and FLOWPROOF_SCHEMA_REGISTRY_PASSWORD",
            )
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if status >= 500 or status < 200 or (status < 300 and payload is None):
            raise ComponentUnreachable(
                COMPONENT, f"{scrub(self.url)}{path} answered HTTP {status}: {_message(payload)}"
            )
        return status, payload

    async def check(self) -> None:
        """ComponentUnreachable unless the registry answers its Confluent API."""
        status, payload = await self.request("GET", "/config")
        if status != 200 or not isinstance(payload, dict):
            raise ComponentUnreachable(
                COMPONENT,
                f"{scrub(self.url)}/config answered HTTP {status}: {_message(payload)}; is this "
                "the Confluent-compatible API (Apicurio: .../apis/ccompat/v7)?",
            )

    async def schema_by_id(self, schema_id: int) -> str | None:
        """The schema text id `schema_id` names, or None when the registry has no such id."""
        status, payload = await self.request("GET", f"/schemas/ids/{schema_id}")
        if status == 404:
            return None
        _expect(status, payload, f"/schemas/ids/{schema_id}")
        schema_type = payload.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            return None
        return str(payload["schema"])

    async def register(self, subject: str, schema: str) -> int:
        """The id of `schema` under `subject`, registering it as a new version if needed."""
        path = f"/subjects/{subject_path(subject)}/versions"
        status, payload = await self.request("POST", path, {"schema": schema})
        if status in (409, 422):
            raise SchemaRefused(subject, status, _message(payload))
        _expect(status, payload, path)
        return int(payload["id"])

    async def compatibility(self, subject: str) -> str | None:
        """The subject's own compatibility level, or None when the subject does not exist yet."""
        status, payload = await self.request("GET", f"/config/{subject_path(subject)}")
        if status == 404:
            return None
        _expect(status, payload, f"/config/{subject}")
        return str(payload.get("compatibilityLevel") or payload.get("compatibility"))

    async def set_compatibility(self, subject: str, level: str) -> None:
        path = f"/config/{subject_path(subject)}"
        status, payload = await self.request("PUT", path, {"compatibility": level})
        _expect(status, payload, path)

    async def subjects(self) -> list[str]:
        status, payload = await self.request("GET", "/subjects")
        _expect(status, payload, "/subjects")
        return [str(s) for s in payload]

    async def versions(self, subject: str) -> list[dict[str, Any]]:
        """Every version of `subject`: dicts with subject, version, id and schema."""
        path = f"/subjects/{subject_path(subject)}/versions"
        status, numbers = await self.request("GET", path)
        if status == 404:
            return []
        _expect(status, numbers, path)
        found = []
        for number in numbers:
            status, payload = await self.request("GET", f"{path}/{int(number)}")
            _expect(status, payload, f"{path}/{number}")
            found.append(payload)
        return found

    async def is_compatible(self, subject: str, schema: str) -> bool:
        """Whether the registry's rules for `subject` let `schema` be registered under it."""
        path = f"/compatibility/subjects/{subject_path(subject)}/versions/latest"
        status, payload = await self.request("POST", path, {"schema": schema})
        if status == 404:  # no version yet: anything may be the first
            return True
        if status in (409, 422):
            return False
        _expect(status, payload, path)
        return bool(payload.get("is_compatible"))


def _cause(exc: BaseException) -> str:
    """The error and, when its own words are empty (httpx's ReadError after a reset), the first
    cause that has some: `ReadError: ConnectionResetError: [Errno 104] Connection reset by peer`.
    """
    words = f"{type(exc).__name__}: {scrub(str(exc))}"
    cause = exc.__cause__ or exc.__context__
    while not str(exc) and cause is not None:
        exc, cause = cause, cause.__cause__ or cause.__context__
        if str(exc):
            words += f"{type(exc).__name__}: {scrub(str(exc))}"
    return words


def _message(payload: Any) -> str:
    if isinstance(payload, dict) and "message" in payload:
        return scrub(str(payload["message"]))[:500]
    return "no message"


def _expect(status: int, payload: Any, path: str) -> None:
    if status >= 300 or payload is None:
        raise ComponentUnreachable(COMPONENT, f"{path} answered HTTP {status}: {_message(payload)}")
