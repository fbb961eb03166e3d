"""What every client script of the end-to-end suite shares.

* ``IdpCredential``: a ``TokenCredential`` (azure-core's protocol: ``get_token`` returning an
  ``AccessToken``) that gets the *caller's* token from the company identity provider (the
  certified ``oidc-provider``) by the client-credentials grant, for the gate's audience. The Azure
  SDK asks for ``https://dev.azuresynapse.net/.default``; the gate, not the caller, holds the
  Synapse identity, so the credential answers with a token for the gate whatever the scope.
* ``RequestLog``: an azure-core pipeline policy that records every request the SDK sends (method,
  URL, ``x-ms-client-request-id``), so the test can prove paging and polling stayed on the gate and
  match each request with its audit event and what Synapse saw.

Configuration comes from the environment the Rust test sets (never from files in the repo):
``IDP_TOKEN_ENDPOINT``, ``E2E_CLIENTS`` (JSON: persona -> {client_id, client_secret}),
``GATE_RESOURCE``, ``REQUESTS_CA_BUNDLE`` (the test CA).
"""

import json
import os
import sys
import threading
import time

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import SansIOHTTPPolicy


class IdpCredential:
    """Client-credentials tokens from the IdP for the gate's resource, cached until near expiry."""

    def __init__(self, persona):
        clients = json.loads(os.environ["E2E_CLIENTS"])
        self.persona = persona
        self.client_id = clients[persona]["client_id"]
        self.client_secret = clients[persona]["client_secret"]
        self.token_endpoint = os.environ["IDP_TOKEN_ENDPOINT"]
        self.resource = os.environ["GATE_RESOURCE"]
        self.requested_scopes = []
        self._cached = None
        self._lock = threading.Lock()

    def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        self.requested_scopes.append(list(scopes))
        with self._lock:
            if self._cached is None or self._cached.expires_on - 60 < time.time():
                reply = requests.post(
                    self.token_endpoint,
                    data={
                        "grant_type": "client_credentials",
                        "resource": self.resource,
                        "scope": "synapse",
                    },
                    auth=(self.client_id, self.client_secret),
                    timeout=30,
                )
                reply.raise_for_status()
                body = reply.json()
                self._cached = AccessToken(
                    body["access_token"], int(time.time()) + int(body["expires_in"])
                )
            return self._cached

    def close(self):
        pass


class StaticCredential:
    """A token the caller already holds (a FastAPI service passing its user's token on)."""

    def __init__(self, token):
        self._token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self._token, int(time.time()) + 300)


class RequestLog(SansIOHTTPPolicy):
    """Records every request the SDK sends, with who sent it."""

    def __init__(self, persona, log):
        super().__init__()
        self.persona = persona
        self.log = log

    def on_request(self, request):
        http = request.http_request
        self.log.append(
            {
                "persona": self.persona,
                "method": http.method,
                "url": http.url,
                "client_request_id": http.headers.get("x-ms-client-request-id"),
            }
        )


def emit(result):
    """The script's result for the Rust test: one JSON line on stdout, prefixed to be found."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
