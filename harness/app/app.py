"""The experiment's Flask app (docs/results.md), plus the routes the tracer's
tests need: a 404, a 500, a POST that reads its body, a light endpoint, and
one with an identifier in its path, and one that takes a known time."""
import time

from flask import Flask, abort, request

app = Flask(__name__)


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
