# JupyterHub configuration for the local demo (scripts/demo.sh): a real JupyterHub that
# launches hubgate as its proxy, exactly as it would launch configurable-http-proxy.
#
#   Log in at http://127.0.0.1:8000/hub/login with ANY user name and the password
#   "hubgate-demo".
#
# Not for production: SharedPasswordAuthenticator lets anyone with the password log in as
# any (new) user, and SimpleLocalProcessSpawner runs every user's server as the hub's own
# Unix user with no isolation.
#
# scripts/demo.sh sets these environment variables (defaults in brackets):
#   HUBGATE_DEMO_PROXY   proxy binary [<repo>/target/release/hubgate]
#   HUBGATE_DEMO_STATE   state dir: database, cookie secret, pid files, homes [<repo>/tmp/demo]
#   PORT                 public port of the proxy [8000]
#   HUB_PORT             the hub's own (internal) port [8081]
#   PROXY_API_PORT       the proxy's REST API port [8001]
#   HUBGATE_DEMO_TAG     copied into every single-user server's environment so demo.sh can
#                        find and stop stragglers
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

repo = Path(__file__).resolve().parents[1]
state = Path(os.environ.get("HUBGATE_DEMO_STATE", repo / "tmp" / "demo"))
venv_bin = Path(sys.executable).parent  # the hub runs from .venv; so do the user servers

port = int(os.environ.get("PORT", "8000"))
hub_port = int(os.environ.get("HUB_PORT", "8081"))
api_port = int(os.environ.get("PROXY_API_PORT", "8001"))

# --- the proxy: hub-managed hubgate ------------------------------------------------
# JupyterHub starts this command with CHP's flags (--ip --port --api-ip --api-port
# --error-target --log-level) and the API token in CONFIGPROXY_AUTH_TOKEN.
c.ConfigurableHTTPProxy.command = [
    os.environ.get("HUBGATE_DEMO_PROXY", str(repo / "target" / "release" / "hubgate"))
]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")

# --- the hub, on loopback only ------------------------------------------------------
c.JupyterHub.bind_url = f"http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = hub_port
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
# How often the hub reads last_activity from the proxy's GET /api/routes (default 300 s).
c.JupyterHub.last_activity_interval = 30

# --- log in: any user name, one shared password ----------------------------------------
# (DummyAuthenticator.password is deprecated since JupyterHub 5.3; this is its successor,
# and it requires a password of at least 8 characters.)
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "hubgate-demo"
c.Authenticator.allow_all = True

# --- user servers: local processes, no system users needed ----------------------------
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(state / "home" / "{username}")
c.Spawner.cmd = [str(venv_bin / "jupyterhub-singleuser")]
c.Spawner.ip = "127.0.0.1"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
if os.environ.get("HUBGATE_DEMO_TAG"):
    c.Spawner.environment = {"HUBGATE_DEMO_TAG": os.environ["HUBGATE_DEMO_TAG"]}
# Running as root: ServerApp.allow_root=true comes from
# .venv/etc/jupyter/jupyter_server_config.json, written by scripts/setup.sh.
