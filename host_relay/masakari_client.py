"""A small Masakari client: one POST /v1/notifications over a keystoneauth1 Session.

Why keystoneauth1 and not openstacksdk (measured here, Python 3.11.7, keystoneauth1
5.18.1, openstacksdk 4.22.0, median of 3 runs, RSS from /proc/self/status VmRSS):

    imported                                         wall     VmRSS    (bare python 8.6 MB)
    keystoneauth1.session + .loading                  ~80 ms  29.2 MB
    openstack.connection + instance_ha.v1._proxy     ~190 ms  45.6 MB
    oslo.config + oslo.log (the relay has these)      ~85 ms  28.6 MB
      ... + keystoneauth1                            ~110 ms  35.1 MB  (+6.5 MB, +25 ms)
      ... + openstacksdk                             ~208 ms  50.0 MB  (+21.4 MB, +120 ms)

(`python -X importtime`: sum of self times 98 ms for keystoneauth1, 197 ms for openstacksdk.)
The relay runs on every compute host and needs exactly one call; keystoneauth1 gives
the same auth plugins, catalog lookup and `[group]` options that masakari-monitors'
openstacksdk setup reads, for a third of the extra memory and half the import time.

Everything here is blocking: the sender calls :meth:`MasakariClient.post_notification`
in a worker thread (``asyncio.to_thread``).  It never raises for transport or HTTP
errors; the outcome is a :class:`Result` that ``sender.classify`` turns into a verdict.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any, Optional

from keystoneauth1 import loading as ks_loading
from keystoneauth1 import noauth as ks_noauth
from keystoneauth1 import session as ks_session

LOG = logging.getLogger(__name__)

SERVICE_TYPE = "instance-ha"
DEFAULT_NOAUTH_TOKEN = "admin:admin"  # noqa: S105 - masakari's noauth2 "user:project", not a secret
MAX_BODY = 2000  # characters of a response body kept for logs and the outbox

# '<endpoint>' may be the API root (http://h:15868), or already versioned as
# http://h:15868/v1 or http://h:15868/v1/<project_id> (the usual catalog entry).
_VERSIONED = re.compile(r"/v1(/[^/]+)?$")


@dataclasses.dataclass(frozen=True)
class Result:
    status: Optional[int]  # HTTP status, None when no answer (refused, timeout, no endpoint)
    body: str
    notification_uuid: Optional[str]
    error: str  # what went wrong, '' on success; a transport error or the API's message


def notifications_url(endpoint: str) -> str:
    """The notifications URL for a masakari endpoint from the catalog or config."""
    base = endpoint.rstrip("/")
    if _VERSIONED.search(base):
        return base + "/notifications"
    return base + "/v1/notifications"


def notification_body(entry: Any) -> dict:
    """The request body for an outbox entry; built at send time from the row."""
    return {
        "notification": {
            "type": "VM",
            "hostname": entry.hostname,
            "generated_time": entry.generated_time,
            "payload": {
                "event": "LIFECYCLE",
                "instance_uuid": entry.instance_uuid,
                "vir_domain_event": "STOPPED_FAILED",
            },
        }
    }


def _api_message(body: str) -> str:
    """Masakari's explanation from an error body ({"conflictingRequest": {"message": ..}})."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip()[:MAX_BODY]
    if isinstance(doc, dict):
        for value in doc.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
    return body.strip()[:MAX_BODY]


class MasakariClient:
    def __init__(
        self,
        session: ks_session.Session,
        *,
        service_type: str = SERVICE_TYPE,
        interface: Any = "public",  # a name or a list of names, as keystoneauth accepts
        region_name: Optional[str] = None,
        endpoint_override: Optional[str] = None,
        noauth_token: str = DEFAULT_NOAUTH_TOKEN,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
    ):
        self.session = session
        self.service_type = service_type
        self.interface = interface
        self.region_name = region_name
        self.endpoint_override = endpoint_override
        self.noauth_token = noauth_token
        self.timeout = (connect_timeout, read_timeout)

    @property
    def is_noauth(self) -> bool:
        return isinstance(self.session.auth, ks_noauth.NoAuth)

    def endpoint(self) -> str:
        """The masakari endpoint: override, the `none` plugin's endpoint, or the catalog's."""
        if self.endpoint_override:
            url = self.endpoint_override
        else:
            url = self.session.get_endpoint(
                service_type=self.service_type,
                interface=self.interface,
                region_name=self.region_name,
            )
            if not url:
                raise LookupError(
                    f"no {self.service_type!r} endpoint (interface {self.interface!r}, "
                    f"region {self.region_name!r}) in the service catalog"
                )
        if "%(" in url:  # an unexpanded catalog template such as /v1/%(tenant_id)s
            project = self.session.get_project_id() or ""
            url = url % {"tenant_id": project, "project_id": project}
        return url

    def post_notification(self, entry: Any) -> Result:
        try:
            url = notifications_url(self.endpoint())
        except Exception as exc:  # keystone down, bad credentials, no catalog entry
            return Result(None, "", None, f"endpoint lookup failed: {_describe(exc)}")
        headers = {"Accept": "application/json"}
        kwargs: dict[str, Any] = {}
        if self.is_noauth:
            # keystoneauth's `none` plugin would send 'X-Auth-Token: notused'; masakari's
            # noauth2 reads "user:project" from the token, so send the configured one.
            headers["X-Auth-Token"] = self.noauth_token
            kwargs["authenticated"] = False
        try:
            resp = self.session.post(
                url,
                json=notification_body(entry),
                headers=headers,
                raise_exc=False,
                connect_retries=0,
                status_code_retries=0,
                timeout=self.timeout,
                **kwargs,
            )
        except Exception as exc:  # ConnectFailure, ConnectTimeout, auth failures, ...
            return Result(None, "", None, _describe(exc))
        body = resp.text[:MAX_BODY] if resp.text else ""
        if resp.status_code == 202:
            uuid = None
            try:
                uuid = resp.json()["notification"]["notification_uuid"]
            except (ValueError, KeyError, TypeError):
                LOG.warning("masakari answered 202 without a notification_uuid: %s", body)
            return Result(202, body, uuid, "")
        return Result(resp.status_code, body, None, _api_message(body))


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:MAX_BODY]


# -- configuration -------------------------------------------------------------------
# The [masakari] options (keystoneauth's plus noauth_token) are registered once, by
# host_relay.conf.masakari; these helpers read them.

def session_from_conf(conf: Any, group: str) -> ks_session.Session:
    """A keystoneauth Session from `[group]`: auth plugin plus TLS/timeout options."""
    auth = ks_loading.load_auth_from_conf_options(conf, group)
    return ks_loading.load_session_from_conf_options(conf, group, auth=auth)


def _opt(conf: Any, group: str, name: str, default: Any) -> Any:
    try:
        value = getattr(conf[group], name)
    except Exception:  # option not registered under this group
        return default
    return default if value is None else value


def client_from_conf(
    conf: Any,
    group: str,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    session: Optional[ks_session.Session] = None,
) -> MasakariClient:
    """A MasakariClient from `[group]`; adapter options are used when registered."""
    session = session or session_from_conf(conf, group)
    interfaces = _opt(conf, group, "valid_interfaces", None) or ["public"]
    return MasakariClient(
        session,
        service_type=_opt(conf, group, "service_type", SERVICE_TYPE),
        interface=interfaces if len(interfaces) > 1 else interfaces[0],
        region_name=_opt(conf, group, "region_name", None),
        endpoint_override=_opt(conf, group, "endpoint_override", None),
        noauth_token=_opt(conf, group, "noauth_token", DEFAULT_NOAUTH_TOKEN),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
