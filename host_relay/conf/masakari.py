"""[masakari] options: how the relay reaches masakari-api.

Authentication, TLS and endpoint discovery are keystoneauth's usual options,
registered the way masakari-monitors registers its ``[api]`` group
(``auth_type`` plus the chosen plugin's options, the session options, and the
adapter options that pick the endpoint from the service catalog).  Two set-ups
are common:

* Keystone: ``auth_type = password`` with ``auth_url``, ``username``,
  ``password``, ``project_name``, ``user_domain_name`` and
  ``project_domain_name``; the endpoint comes from the catalog
  (``service_type``, ``valid_interfaces``, ``region_name``).
* No Keystone (a ``noauth2`` masakari-api, tests, demos):
  ``auth_type = none`` with ``endpoint = http://127.0.0.1:15868``; the relay
  then sends ``noauth_token`` as ``X-Auth-Token``.

The rest of the group is iim's own: request timeout and the retry backoff of
the durable outbox.
"""

from __future__ import annotations

import copy

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from host_relay.conf._group import register_group

GROUP = "masakari"

DEFAULT_AUTH_TYPE = "password"  # as masakari-monitors' [api]
DEFAULT_SERVICE_TYPE = "instance-ha"  # Masakari's entry in the service-types authority
DEFAULT_VALID_INTERFACES = ["internal", "public"]  # a host service: internal first

# keystoneauth plugins whose options the sample documents: the Keystone
# set-up and the no-Keystone one.
SAMPLE_AUTH_PLUGINS = ("password", "none")

masakari_group = cfg.OptGroup(
    GROUP,
    title="Masakari API options",
    help="""
How the relay reaches masakari-api. With Keystone, set ``auth_type =
password`` (the default) and the usual ``auth_url``, ``username``,
``password``, ``project_name``, ``user_domain_name`` and
``project_domain_name``; the endpoint is then looked up in the catalog
by ``service_type``, ``valid_interfaces`` and ``region_name`` (or given
with ``endpoint_override``). Without Keystone (masakari-api with
``auth_strategy = noauth2``), set ``auth_type = none`` and ``endpoint =
http://HOST:15868``.
""",
)

masakari_opts = [
    cfg.StrOpt(
        "noauth_token",
        default="admin:admin",
        secret=True,
        help="""
Value sent as ``X-Auth-Token`` when ``auth_type = none``, for a
masakari-api running with ``auth_strategy = noauth2`` (which reads it as
``user:project``). Never sent with any other ``auth_type``.
""",
    ),
    cfg.FloatOpt(
        "request_timeout",
        default=10.0,
        min=1.0,
        max=300.0,
        help="""
Seconds to wait for masakari-api to answer one notification request
before treating it as failed and retrying it later from the outbox. It
applies to every request the relay makes and takes precedence over
keystoneauth's ``timeout``. masakari-api may sleep up to its
``notification_delay_max`` (5 s by default) before answering, so keep
this well above that; a value too high only delays the retry of a
request that hung.
""",
    ),
    cfg.FloatOpt(
        "backoff_initial",
        default=1.0,
        min=0.1,
        max=600.0,
        help="""
Seconds before the first retry of a notification that could not be
delivered (masakari-api down, 5xx, timeout); each further failure
doubles the delay up to ``backoff_max``. The notification waits in the
durable outbox meanwhile, so retrying never loses it. Smaller values
deliver sooner after a short outage and load a recovering masakari-api
more.
""",
    ),
    cfg.FloatOpt(
        "backoff_max",
        default=60.0,
        min=1.0,
        max=3600.0,
        help="""
Upper bound, in seconds, of the retry delay. It is the longest a
notification waits after masakari-api comes back; higher values are
gentler on an API that stays down for long. Must be at least
``backoff_initial``.
""",
    ),
    cfg.FloatOpt(
        "jitter",
        default=0.2,
        min=0.0,
        max=1.0,
        help="""
Fraction of each retry delay that is randomised (0.2: the delay varies
by up to 20 %), so that relays on many hosts do not retry against a
recovering masakari-api in lock-step. 0 makes the delays exact.
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    register_group(conf, masakari_group)
    conf.register_opts(masakari_opts, group=masakari_group)
    ks_loading.register_session_conf_options(conf, GROUP)
    ks_loading.register_auth_conf_options(conf, GROUP)
    ks_loading.register_adapter_conf_options(conf, GROUP, include_deprecated=False)
    conf.set_default("auth_type", DEFAULT_AUTH_TYPE, group=GROUP)
    conf.set_default("service_type", DEFAULT_SERVICE_TYPE, group=GROUP)
    conf.set_default("valid_interfaces", DEFAULT_VALID_INTERFACES, group=GROUP)


def _with_defaults(opts: list[cfg.Opt], defaults: dict[str, object]) -> list[cfg.Opt]:
    """Copies of keystoneauth's opts carrying iim's defaults, for the sample."""
    out = []
    for opt in opts:
        if opt.dest in defaults:
            opt = copy.deepcopy(opt)
            opt.default = defaults[opt.dest]
        out.append(opt)
    return out


def keystoneauth_opts() -> list[cfg.Opt]:
    """keystoneauth's options in this group, as the sample documents them."""
    defaults = {
        "auth_type": DEFAULT_AUTH_TYPE,
        "service_type": DEFAULT_SERVICE_TYPE,
        "valid_interfaces": DEFAULT_VALID_INTERFACES,
    }
    opts = _with_defaults(
        ks_loading.get_session_conf_options()
        + ks_loading.get_auth_common_conf_options()
        + ks_loading.get_adapter_conf_options(include_deprecated=False),
        defaults,
    )
    seen = {opt.dest for opt in opts}
    for plugin in SAMPLE_AUTH_PLUGINS:
        for opt in ks_loading.get_auth_plugin_conf_options(plugin):
            if opt.dest not in seen:
                seen.add(opt.dest)
                opts.append(opt)
    return opts


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {masakari_group: masakari_opts + keystoneauth_opts()}


# --- is the group usable? -----------------------------------------------------------------------

# Besides each plugin's required options (auth_url...), who is authenticating: keystoneauth
# accepts a password plugin without a user and fails only at the first request.
# plugin -> alternatives, each a tuple of options that together suffice.
_IDENTITY = {
    "password": (("username", "password"), ("user_id", "password")),
    "v3password": (("username", "password"), ("user_id", "password")),
    "token": (("token",),),
    "v3token": (("token",),),
    "v3applicationcredential": (
        ("application_credential_id", "application_credential_secret"),
        ("application_credential_name", "username", "application_credential_secret"),
        ("application_credential_name", "user_id", "application_credential_secret"),
    ),
    "none": (("endpoint",), ("endpoint_override",)),
}

KEYSTONE_EXAMPLE = ("auth_url = http://KEYSTONE:5000/v3, username, password, project_name, "
                    "user_domain_name and project_domain_name")
NOAUTH_EXAMPLE = "auth_type = none and endpoint = http://MASAKARI-API:15868"


def _missing(conf: cfg.ConfigOpts, section: str, name: str) -> list[str]:
    """Options [section] still needs for ``auth_type = name``, in the order to write them."""
    group = conf[section]

    def unset(dest: str) -> bool:
        if dest == "endpoint_override":
            return not conf[GROUP].endpoint_override
        return dest not in group or not group[dest]

    required = [o.dest for o in ks_loading.get_plugin_loader(name).get_options()
                if o.required and unset(o.dest)]
    choices = _IDENTITY.get(name)
    if choices and all(any(unset(d) for d in choice) for choice in choices):
        first = choices[0]
        required += [d for d in first if unset(d) and d not in required]
    return required


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_usable(conf: cfg.ConfigOpts) -> None:
    """Raise ConfigError unless [masakari] can authenticate and find masakari-api.

    ``iim-relay run`` calls it after loading: a relay that can never deliver
    must say so at once (exit status 2), not queue notifications forever nor
    fail in keystoneauth at the first one.  The message names the file to
    write, the options missing and the two usual set-ups.
    """
    from host_relay.conf.loader import ConfigError, config_files

    section = conf[GROUP].auth_section or GROUP
    name = conf[section].auth_type
    files = config_files(conf)
    if files:
        where = files[-1]
    else:
        where = ("no configuration file was read (looked for /etc/iim/relay.conf; "
                 "give one with --config-file)")
    fix = (f"for Keystone set auth_type = password with {KEYSTONE_EXAMPLE}; for a "
           f"masakari-api without Keystone set {NOAUTH_EXAMPLE}")
    if not name:
        raise ConfigError(f"{where}: [{section}] auth_type is not set, so iim-relay cannot reach "
                          f"masakari-api: {fix}")
    missing = _missing(conf, section, name)
    if missing:
        set_by_user = conf.get_location("auth_type", section).location.is_user_controlled
        default = "" if set_by_user else " (the default)"
        raise ConfigError(
            f"{where}: [{section}] auth_type = {name}{default} needs {_and(missing)}, "
            f"so iim-relay cannot reach masakari-api: write them in [{section}]; {fix}")
    try:  # what keystoneauth will do at the first notification, done now
        auth = ks_loading.load_auth_from_conf_options(conf, GROUP)  # follows auth_section
        ks_loading.load_session_from_conf_options(conf, GROUP, auth=auth)
    except Exception as exc:  # noqa: BLE001 - every keystoneauth refusal is a config error
        raise ConfigError(f"{where}: [{section}] auth_type = {name}: keystoneauth refuses the "
                          f"options ({type(exc).__name__}: {exc}): {fix}") from None
