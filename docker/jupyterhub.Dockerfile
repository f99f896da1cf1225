# A JupyterHub for the compose demo: dummy login, local spawner, JupyterLab.
FROM python:3.11-slim
RUN pip install --no-cache-dir "jupyterhub>=6,<7" jupyterlab ipykernel
WORKDIR /srv/jupyterhub
EXPOSE 8081
CMD ["jupyterhub", "-f", "/srv/jupyterhub/jupyterhub_config.py"]
