# JupyterHub behind an external hubgate (docker-compose.yml): the hub does not start
# the proxy; it talks to hubgate's API and hubgate sends unrouted requests to the hub.
import os

c = get_config()  # noqa: F821

c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = "jupyterhub"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://hubgate:8001"
c.ConfigurableHTTPProxy.auth_token = os.environ["CONFIGPROXY_AUTH_TOKEN"]

# Demo login and spawner: any user name, one shared password; servers run in this container.
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ.get("DEMO_PASSWORD", "hubgate-demo")
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.Spawner.ip = "0.0.0.0"
c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/lab"
