"""The experiment's Flask app (docs/results.md), plus the routes the tracer's
tests need: a 404, a 500, a POST that reads its body, a light endpoint, and
one with an identifier in its path, and one that takes a known time.

And routes that call other servers (over http or https, as their base URL
says; SSL_CERT_FILE and REQUESTS_CA_BUNDLE name the CA to trust), for the
tracer's CLIENT spans: /fetch-work calls CHAIN_DOWNSTREAM's /work; /chain
calls the service at CHAIN_DOWNSTREAM twice (with requests on a keep-alive
session, then with http.client) and the server at CHAIN_UNTRACED once;
/call-status, /call-reset and /call-refused call CALL_STATUS, CALL_RESET
and CALL_REFUSED (base URLs, e.g. http://127.0.0.1:8001) and answer 502
when the call fails or does not answer 200."""
import http.client
import os
import time
import urllib.parse

import requests
from flask import Flask, abort, request

app = Flask(__name__)

# One per worker process (gunicorn imports the app after forking): its
# connections stay open between requests.
session = requests.Session()

# Long enough for a loaded machine; a call never waits forever.
CALL_TIMEOUT_SECONDS = 30


@app.get("/work")
def work():
    # CPU-bound, as published: a 48,889-byte body, about 0.7 ms of CPU.
    numbers = list(range(10000))
    return " ".join(map(str, numbers))


@app.get("/slow")
def slow():
    # A floor under the span's duration: no response leaves sooner.
    time.sleep(SLOW_SECONDS)
    return "slept"


SLOW_SECONDS = 0.02


@app.get("/light")
def light():
    return "ok"


@app.post("/echo-size")
def echo_size():
    return str(len(request.get_data()))


@app.get("/fail")
def fail():
    abort(500)


@app.get("/missing")
def missing():
    abort(404)


@app.get("/users/<int:user_id>")
def user(user_id):
    return {"id": user_id}


def get(variable, path):
    """GET `path` of the server at the base URL in `variable` (http or
    https) with http.client, on a connection of its own; the status."""
    url = urllib.parse.urlsplit(os.environ[variable])
    if url.scheme == "https":
        connect = http.client.HTTPSConnection
    else:
        connect = http.client.HTTPConnection
    connection = connect(url.hostname, url.port, timeout=CALL_TIMEOUT_SECONDS)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@app.get("/chain")
def chain():
    downstream = os.environ["CHAIN_DOWNSTREAM"]
    statuses = [
        session.get(downstream + "/light", timeout=CALL_TIMEOUT_SECONDS).status_code,
        get("CHAIN_DOWNSTREAM", "/users/7"),
        get("CHAIN_UNTRACED", "/untraced"),
    ]
    if statuses != [200, 200, 200]:
        return f"calls answered {statuses}", 502
    return "chained"


@app.get("/fetch-work")
def fetch_work():
    """GETs /work of CHAIN_DOWNSTREAM: a 48,889-byte body, which the client
    reads in many reads (over TLS, some served from OpenSSL's buffer)."""
    status = get("CHAIN_DOWNSTREAM", "/work")
    if status != 200:
        return f"call answered {status}", 502
    return "fetched"


def relay(variable):
    """One call to `variable`'s server: 200 if it answered 200, else 502."""
    try:
        status = get(variable, "/called")
    except (http.client.HTTPException, OSError) as error:
        return f"call failed: {type(error).__name__}", 502
    if status != 200:
        return f"call answered {status}", 502
    return "relayed"


@app.get("/call-status")
def call_status():
    return relay("CALL_STATUS")


@app.get("/call-reset")
def call_reset():
    return relay("CALL_RESET")


@app.get("/call-refused")
def call_refused():
    return relay("CALL_REFUSED")
