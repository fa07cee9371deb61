"""The components of the Flower App that ``neuratlas federated deploy`` (and ``flwr run`` of a Neuratlas app)
starts on Flower's deployment engine: the ServerApp and ClientApp of ``messages.py``, configured by the run
config the app is started with."""

from neuratlas.paradigms.federated.messages import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
