"""python -m manualbp.playground: the real server, started on a free port of 127.0.0.1 and stopped by
Ctrl+C (SIGINT); its JSON API (every δ it shows equals torch autograd's, bad parameters are answered
with a message, tabs are independent); and the page itself in a real headless Chromium (Debian's
chromium + chromium-driver, driven by Selenium): data and net changes, Step, Play, a clicked node's δ
against autograd, a drawn digit, a bad parameter's message, the step time.

``PLAYGROUND_SCREENSHOTS=docs/pages/figures python -m pytest tests/test_playground.py -k screenshots`` writes
the README's screenshots of both tabs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("starlette", reason="the playground needs its extra: pip install -e \".[playground]\"")
pytest.importorskip("uvicorn", reason="the playground needs its extra: pip install -e \".[playground]\"")

TOLERANCE = 1e-6  # the bar; float64 nets agree with autograd to ~1e-15

# ----------------------------------------------------------------------------------------------
# The server, as a user starts it
# ----------------------------------------------------------------------------------------------


def start_server(*arguments: str, cwd: Path) -> tuple[subprocess.Popen, str]:
    """``python -m manualbp.playground --port 0 --no-browser ARGUMENTS``: the process and its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "manualbp.playground", "--port", "0", "--no-browser", *arguments],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "playground at" in line or process.poll() is not None:
            break
    match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not match:
        process.kill()
        raise AssertionError(f"the playground did not start: {line!r} {process.stderr.read()}")
    return process, match.group(1)


def stop_server(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)  # Ctrl+C
    try:
        output, errors = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the playground did not stop within 30 s of Ctrl+C") from None
    return process.returncode, output + errors


@pytest.fixture(scope="module")
def server(digit_checkpoint, tmp_path_factory):
    process, url = start_server("--checkpoint", str(digit_checkpoint), cwd=tmp_path_factory.mktemp("server"))
    yield url
    status, output = stop_server(process)
    assert status == 0, output
    assert "Traceback" not in output, output


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + "/api/" + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ok(url: str, path: str, body: dict | None = None) -> dict:
    status, answer = call(url, path, body)
    assert status == 200, answer
    return answer


# ----------------------------------------------------------------------------------------------
# The same net by torch autograd, from the weights the server reports
# ----------------------------------------------------------------------------------------------

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "elu": torch.nn.functional.elu, "tanh": torch.tanh}


def autograd_deltas(config: dict, weights: dict, points: list, targets: list) -> list[tuple[torch.Tensor, ...]]:
    """(value, δ) of every node of the slides' graph -- X, Z₁ = XW₁, Z₂ = Z₁ + b₁, Z₃ = σ(Z₂), ... --
    by torch built-ins and ``backward()``, in float64."""
    inputs = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    layer_indices = sorted({int(name.split(".")[0]) for name in weights})
    nodes = [inputs]
    activation = inputs
    for position, index in enumerate(layer_indices):
        weight = torch.tensor(weights[f"{index}.weight"], dtype=torch.float64)
        bias = torch.tensor(weights[f"{index}.bias"], dtype=torch.float64)
        product = activation @ weight.t()  # Z = X W (slides) = X Wᵀ (torch's layout)
        summed = product + bias
        nodes += [product, summed]
        activation = summed
        last = position == len(layer_indices) - 1
        if not last:
            activation = ACTIVATIONS[config["activation"]](summed)
            nodes.append(activation)
        elif config["loss"] == "euclidean" and config["dataset"] != "function":
            activation = torch.sigmoid(summed)  # the XOR slide's Yp = σ(Z₅)
            nodes.append(activation)
    for node in nodes:
        node.retain_grad()
    n = len(points)
    if config["loss"] == "euclidean":
        target = torch.tensor(targets, dtype=torch.float64)
        loss = 0.5 * ((activation - target) ** 2).sum() / n
    else:
        labels = torch.tensor(targets)
        if config["loss"] == "softmax_cross_entropy":
            loss = torch.nn.functional.cross_entropy(activation, labels)
        else:
            one_hot = torch.nn.functional.one_hot(labels, activation.shape[1]).to(torch.float64)
            loss = 0.5 * ((torch.softmax(activation, 1) - one_hot) ** 2).sum() / n
    loss.backward()
    return [(node.detach(), node.grad) for node in nodes]


def node_names(state: dict) -> list[str]:
    return [node["name"] for node in state["nodes"]]


def reference_for(url: str, session: str, state: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    answer = ok(url, "node", {"session": session, "node": "X"})
    return autograd_deltas(state["config"], answer["weights"], answer["points"], answer["targets"])


# ----------------------------------------------------------------------------------------------
# The API
# ----------------------------------------------------------------------------------------------

NETS = [
    {"dataset": "xor", "hidden": [8], "activation": "sigmoid", "loss": "euclidean", "lr": 1.0},
    {"dataset": "moons", "hidden": [8, 8], "activation": "relu", "loss": "softmax_cross_entropy", "batch": 20},
    {"dataset": "spiral", "hidden": [6, 5, 4], "activation": "tanh", "loss": "softmax_euclidean", "points": 60},
    {"dataset": "function", "function": "nielsen", "hidden": [8, 8], "activation": "elu", "loss": "euclidean",
     "lr": 0.5},
    {"dataset": "circles", "hidden": [], "activation": "sigmoid", "loss": "euclidean", "noise": 0.5},
]


@pytest.mark.parametrize("config", NETS, ids=lambda config: f"{config['dataset']}-{config['loss']}")
def test_every_node_delta_equals_autograd(server, config):
    state = ok(server, "session", {"config": config})
    session = state["session"]
    state = ok(server, "step", {"session": session, "steps": 3})
    assert state["steps"] == 3 and len(state["trainLosses"]) == 4
    reference = reference_for(server, session, state)
    names = node_names(state)
    assert len(names) == len(reference), names
    assert names[0] == "X" and names[1:3] == ["Z₁", "Z₂"]
    for name, (value, delta) in zip(names, reference, strict=True):
        shown = ok(server, "node", {"session": session, "node": name})
        assert np.allclose(shown["value"], value, rtol=0, atol=TOLERANCE), name
        assert np.allclose(shown["delta"], delta, rtol=0, atol=TOLERANCE), name
        # the row the page shows for one training point, and the formula written out with numbers
        point = len(state["points"]) - 1
        row = ok(server, "state", {"session": session, "point": point, "selected": name})
        assert np.allclose(row["details"]["delta"], delta[point], rtol=0, atol=TOLERANCE), name
        assert row["details"]["backward"].startswith(f"δ{name} = "), row["details"]["backward"]


def test_parameter_deltas_are_the_slides_formulas(server):
    state = ok(server, "session", {"config": NETS[0]})
    answer = ok(server, "node", {"session": state["session"], "node": "X"})
    reference = autograd_deltas(state["config"], answer["weights"], answer["points"], answer["targets"])
    (inputs, _), (_, delta_z1) = reference[0], reference[1]
    detail = ok(server, "state", {"session": state["session"], "selected": "W₁"})["details"]
    assert np.allclose(detail["delta"], inputs.t() @ delta_z1, atol=TOLERANCE)  # δW₁ = Xᵀ δZ₁ (in, out)
    assert detail["backward"].startswith("δW₁ = Xᵀ δZ₁")
    detail = ok(server, "state", {"session": state["session"], "selected": "b₁"})["details"]
    assert np.allclose(detail["delta"], reference[2][1].sum(0), atol=TOLERANCE)  # δb₁ = Σₖ (δZ₂)ₖ
    detail = ok(server, "state", {"session": state["session"], "selected": "Z₃"})["details"]
    assert detail["backward"].startswith("δZ₃ = δZ₄ W₂ᵀ = [")  # as the slide writes it, numbers put in


def test_a_training_step_is_manual_backprop_and_the_lecture_update(server):
    config = {"dataset": "blobs", "hidden": [4], "activation": "sigmoid", "loss": "euclidean", "lr": 0.5}
    state = ok(server, "session", {"config": config})
    before = ok(server, "node", {"session": state["session"], "node": "X"})
    reference = autograd_deltas(state["config"], before["weights"], before["points"], before["targets"])
    ok(server, "step", {"session": state["session"]})
    after = ok(server, "node", {"session": state["session"], "node": "X"})["weights"]
    grad_w1 = (reference[0][0].t() @ reference[1][1]).t()  # δW₁ in torch's layout (out, in)
    assert np.allclose(after["0.weight"], np.array(before["weights"]["0.weight"]) - 0.5 * grad_w1.numpy(),
                       atol=TOLERANCE)  # W ← W − lr·δW


BAD = [
    ("session", {"config": {"hidden": [8, 99]}}, "hidden: each layer width must be a whole number from 1 to 16"),
    ("session", {"config": {"hidden": [1, 2, 3, 4, 5]}}, "hidden: expected a list of at most 4 layer widths"),
    ("session", {"config": {"lr": "fast"}}, "lr: expected a number from 1e-05 to 100.0, got 'fast'"),
    ("session", {"config": {"lr": 1e9}}, "lr: expected a number from 1e-05 to 100.0, got 1000000000.0"),
    ("session", {"config": {"points": 10**9, "dataset": "moons"}}, "points: expected a number from 10 to 1000"),
    ("session", {"config": {"noise": -1}}, "noise: expected a number from 0.0 to 1.0, got -1"),
    ("session", {"config": {"activation": "os.system"}}, "activation: expected one of sigmoid, relu, elu, tanh"),
    ("session", {"config": {"dataset": "/etc/passwd"}}, "dataset: expected one of xor, circles"),
    ("session", {"config": {"path": "x"}}, "unknown setting(s) path"),
    ("session", {"config": {"dataset": "function", "loss": "softmax_cross_entropy"}}, "needs classes"),
    ("session", {"config": {"dataset": "moons", "points": 50, "batch": 80}}, "batch: a mini-batch of 80 is larger"),
    ("session", {"config": {"seed": 1.5}}, "seed: expected a whole number"),
    ("step", {"session": "nope"}, "session: unknown or expired session; reload the page"),
    ("digit", {"image": "data:image/png;base64,AAAA"}, "image: not a PNG image Pillow can read"),
    ("digit", {"image": "file:///etc/passwd"}, "image: expected the canvas as a PNG data URL"),
]


@pytest.mark.parametrize(("path", "body", "message"), BAD, ids=[message[:30] for _, _, message in BAD])
def test_bad_parameters_are_answered_with_a_message(server, path, body, message):
    status, answer = call(server, path, body)
    assert status == 400, answer
    assert message in answer["error"], answer["error"]
    assert "Traceback" not in answer["error"]


def test_bad_step_counts_points_and_nodes_in_a_session(server):
    session = ok(server, "session", {"config": NETS[0]})["session"]
    for path, body, message in [
        ("step", {"steps": 0}, "steps: expected a whole number from 1 to 200, got 0"),
        ("step", {"steps": "many"}, "steps: expected a whole number from 1 to 200, got 'many'"),
        ("state", {"point": 4}, "point: expected a whole number from 0 to 3, got 4"),
        ("state", {"selected": "Z₉₉"}, "selected: no node or parameter named 'Z₉₉'"),
        ("node", {"node": "__import__"}, "node: no node named '__import__'"),
    ]:
        status, answer = call(server, path, {"session": session, **body})
        assert (status, answer["error"][: len(message)]) == (400, message)
    status, answer = call(server, "config", {"session": session, "config": {"lr": 0}})
    assert status == 400 and answer["error"].startswith("lr: ")
    assert ok(server, "state", {"session": session})["config"]["lr"] == 1.0  # the tab keeps its net


def test_a_diverging_net_is_reported_not_crashed(server):
    session = ok(server, "session", {"config": {"dataset": "function", "hidden": [8], "activation": "relu",
                                                 "lr": 100.0}})["session"]
    state = ok(server, "step", {"session": session, "steps": 200})
    assert state["diverged"] and state["loss"] is None  # NaN: null in JSON, and the page says what to do
    assert ok(server, "node", {"session": session, "node": "Yp"})["delta"][0] == [None]


def test_sessions_are_independent(server):
    first = ok(server, "session", {"config": NETS[0]})
    second = ok(server, "session", {"config": NETS[1]})
    assert first["session"] != second["session"]
    weights = ok(server, "node", {"session": second["session"], "node": "X"})["weights"]
    for _ in range(3):
        ok(server, "step", {"session": first["session"], "steps": 5})
    assert ok(server, "state", {"session": first["session"]})["steps"] == 15
    again = ok(server, "state", {"session": second["session"]})
    assert again["steps"] == 0 and again["config"]["dataset"] == "moons"
    assert ok(server, "node", {"session": second["session"], "node": "X"})["weights"] == weights
    ok(server, "config", {"session": first["session"], "config": {"dataset": "circles"}})
    assert ok(server, "state", {"session": second["session"]})["config"]["dataset"] == "moons"


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def drawn_seven() -> Image.Image:
    image = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(image).line([(70, 60), (210, 60), (120, 230)], fill="black", width=18)
    return image


def test_a_drawing_is_predicted_with_the_input_pixel_deltas_of_autograd(server, digit_checkpoint):
    from manualbp.predict import DigitClassifier, to_mnist_form

    answer = ok(server, "digit", {"image": png_data_url(drawn_seven()), "label": 3})
    assert 0 <= answer["predicted"] <= 9 and answer["label"] == 3
    assert abs(sum(answer["probabilities"]) - 1) < 1e-5
    grey = np.asarray(drawn_seven().convert("L"), dtype=np.float64) / 255
    field = to_mnist_form(grey)
    assert np.allclose(answer["input"], field, atol=1e-6)  # predict's preprocessing
    classifier = DigitClassifier(digit_checkpoint)
    pixels = torch.tensor(field, dtype=torch.float32).flatten()[None].requires_grad_()
    activation = (pixels - classifier.mean) / classifier.std
    for layer in classifier.net:  # torch built-ins on the checkpoint's weights
        activation = torch.nn.functional.linear(activation, layer.weight, layer.bias)
        if type(layer).__name__ == "LinearReLU":
            activation = torch.relu(activation)
    logits = activation
    torch.nn.functional.cross_entropy(logits, torch.tensor([3])).backward()
    assert np.allclose(answer["pixelDelta"], pixels.grad.reshape(28, 28).numpy(), atol=1e-5)
    assert np.argmax(answer["probabilities"]) == answer["predicted"]
    assert len(answer["layers"]) == len(classifier.net)
    status, blank = call(server, "digit", {"image": png_data_url(Image.new("RGB", (280, 280), "white"))})
    assert status == 400 and "no digit found" in blank["error"] and "draw a digit" in blank["error"]


def test_backprop_trace_is_the_engine_pass_with_every_intermediate():
    from manualbp.manual import backprop, backprop_trace
    from manualbp.nn import MLP, MLPClassifier, SoftmaxCrossEntropyLoss

    torch.manual_seed(0)
    net = MLP([3, 5, 4, 2], activation="elu", fuse=False, dtype=torch.float64)
    inputs, targets = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    loss, grads = backprop(net, SoftmaxCrossEntropyLoss(), inputs, targets)
    trace = backprop_trace(net, SoftmaxCrossEntropyLoss(), inputs, targets)
    assert torch.equal(trace.loss, loss) and trace.grads.keys() == grads.keys()
    assert all(torch.equal(trace.grads[name], grads[name]) for name in grads)  # the same Functions, bit for bit
    assert [output.shape[1] for output in trace.outputs] == [5, 5, 4, 4, 2]
    assert len(trace.output_grads) == 5 and trace.input_grad.shape == (6, 3)
    with pytest.raises(Exception, match="layer by layer"):
        backprop_trace(MLPClassifier([3, 4, 2]), SoftmaxCrossEntropyLoss(), inputs.float(), targets)



def xor_learned(lab) -> bool:
    """All four XOR points on the right side of 0.5, the loss well under the plateau's 0.125."""
    with torch.no_grad():
        predicted = (lab.net(lab.inputs)[:, 0] > 0.5).long()
    return bool((predicted == torch.tensor(lab.labels)).all()) and lab.train_losses[-1] < 0.1


@pytest.mark.parametrize("seed", range(8))
def test_the_first_screens_xor_learns_within_60_steps(seed):
    """The page's defaults (only the seed changed), stepped one Step at a time by the lab's own code."""
    from manualbp.playground.lab import Lab, parse_config

    lab = Lab(parse_config({"seed": seed}))
    assert lab.config["dataset"] == "xor"
    for _ in range(60):
        lab.step(1)
        if xor_learned(lab):
            break
    assert xor_learned(lab), f"seed {seed}: loss {lab.train_losses[-1]:.4f} after {lab.steps} steps"
    assert lab.state()["plateau"] is None


def test_a_plateau_is_named():
    from manualbp.playground.lab import Lab, parse_config

    lab = Lab(parse_config({"activation": "sigmoid", "hidden": [8], "lr": 5.0}))  # the old default: ~500 steps flat
    lab.step(10)
    assert lab.state()["plateau"] is None  # too early to say
    lab.step(30)
    assert not xor_learned(lab)
    assert lab.state()["plateau"].startswith("a plateau: the loss has barely moved for ")
    learned = Lab(parse_config({}))
    learned.step(100)
    assert xor_learned(learned) and learned.state()["plateau"] is None


def test_ctrl_c_stops_the_server_cleanly_and_it_binds_localhost(tmp_path):
    process, url = start_server(cwd=tmp_path)
    assert url.startswith("http://127.0.0.1:")
    assert call(url, "digit/info")[1]["ready"] is False  # no --checkpoint: the page says how to give one
    status, output = stop_server(process)
    assert status == 0, output
    assert "playground stopped" in output and "Traceback" not in output


def test_a_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run([sys.executable, "-m", "manualbp.playground", "--no-browser", "--port", str(port)],
                                   capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}; give another --port (or --port 0 for any free one)"
    )


# ----------------------------------------------------------------------------------------------
# The doors: only the server's own pages may call it, bodies and JSON are bounded, steps leave the
# event loop free
# ----------------------------------------------------------------------------------------------


def raw_request(url: str, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict]:
    """One HTTP request with exactly these headers (urllib would add its own Host): (status, JSON answer)."""
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    process, url = start_server(cwd=tmp_path_factory.mktemp("bare"))
    yield url
    stop_server(process)


def test_a_foreign_origin_or_host_is_refused(bare_server):
    port = bare_server.rsplit(":", 1)[1]
    session_body = json.dumps({"config": {"dataset": "xor"}}).encode()
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):  # the server's own names: served
        status, answer = raw_request(bare_server, "POST", "/api/session",
                                     {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json",
                                      "Content-Length": str(len(session_body))}, session_body)
        assert status == 200 and "session" in answer, (host, answer)
    refused = [  # a cross-site page's text/plain POST; a DNS-rebinding page (its own name in Host)
        {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example", "Content-Type": "text/plain"},
        {"Host": f"127.0.0.1:{port}", "Origin": "null", "Content-Type": "text/plain"},
        {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{int(port) + 1}"},
        {"Host": f"evil.example:{port}", "Content-Type": "application/json"},
        {"Host": f"127.0.0.1.evil.example:{port}"},
        {"Host": "127.0.0.1:1"},
    ]
    for headers in refused:
        status, answer = raw_request(bare_server, "POST", "/api/session",
                                     {**headers, "Content-Length": str(len(session_body))}, session_body)
        assert status == 403, (headers, answer)
        assert "is not this server's" in answer["error"] and f"http://127.0.0.1:{port}/" in answer["error"]
    status, answer = raw_request(bare_server, "GET", "/", {"Host": f"evil.example:{port}"})
    assert status == 403  # the page itself too



def test_the_host_rule_follows_the_address_given():
    from manualbp.playground.app import LOCAL_HOSTS, _is_own

    local = LOCAL_HOSTS
    assert all(_is_own(host, local, 8765) for host in ("127.0.0.1:8765", "LOCALHOST:8765", "[::1]:8765"))
    assert not any(_is_own(host, local, 8765) for host in (
        "127.0.0.1:8000", "127.0.0.1", "evil.example:8765", "localhost.evil.example:8765", "192.168.1.5:8765",
        "[::1]", "::1:8765", ""))
    lan = (*local, "192.168.1.5")  # --host 192.168.1.5
    assert _is_own("192.168.1.5:8765", lan, 8765) and not _is_own("10.0.0.1:8765", lan, 8765)
    everywhere = (*local, "0.0.0.0")  # --host 0.0.0.0: any address of this machine, but never a domain name
    assert _is_own("10.0.0.1:8765", everywhere, 8765) and _is_own("[fe80::1]:8765", everywhere, 8765)
    assert not _is_own("rebind.evil.example:8765", everywhere, 8765)


def test_an_oversized_body_is_refused_while_reading(bare_server):
    import socket

    host, port = bare_server.removeprefix("http://").rsplit(":", 1)
    status, answer = raw_request(bare_server, "POST", "/api/state",
                                 {"Host": f"{host}:{port}", "Content-Length": str(150_000_000)})
    assert status == 413 and "larger than 3000000 bytes" in answer["error"]  # before one byte was sent
    with socket.create_connection((host, int(port)), timeout=30) as connection:  # chunked: no length up front
        connection.sendall(f"POST /api/state HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           f"Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk, sent, answered = b"x" * 1_000_000, 0, b""
        connection.settimeout(0.05)
        for _ in range(150):  # 150 MB, unless the server answers first
            try:
                connection.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += 1
                answered = connection.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if answered:
                break
        connection.settimeout(30)
        try:
            answered += connection.recv(4096)
        except OSError:
            pass
    assert answered.startswith(b"HTTP/1.1 413"), answered[:200]
    assert sent < 20, f"the server read {sent} MB before answering"




def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


HUGE_PNG = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 2)) + png_chunk(b"IEND", b""))  # 100,000² grey pixels, 57 bytes


@pytest.mark.parametrize(("path", "raw", "message"), [
    ("session", b'{"config": {"lr": 1' + b"0" * 400 + b"}}", "a whole number of 401 digits"),
    ("session", b'{"config": {"seed": 9' * 1 + b"9" * 5000 + b"}}", "a whole number of 5001 digits"),
    ("session", b"[" * 100_000 + b"]" * 100_000, "nests deeper than 32 levels"),
    ("session", b'{"config": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001, "nests deeper than 32 levels"),
    ("digit", json.dumps({"image": "data:image/png;base64,"
                          + base64.b64encode(HUGE_PNG).decode()}).encode(),
     "image: expected a PNG of at most 2000×2000 pixels"),
], ids=["huge-float-int", "huge-int", "deep-arrays", "deep-objects", "huge-png"])
def test_huge_numbers_deep_json_and_a_huge_png_are_400s(server, path, raw, message):
    host = server.removeprefix("http://")
    status, answer = raw_request(server, "POST", f"/api/{path}", {"Host": host, "Content-Type": "application/json",
                                                                  "Content-Length": str(len(raw))}, raw)
    assert status == 400, answer
    assert message in answer["error"], answer["error"]


def test_steps_leave_the_server_free_and_stop_when_the_client_goes_away(bare_server):
    import http.client
    import threading

    host, port = bare_server.removeprefix("http://").rsplit(":", 1)
    heavy = {"dataset": "circles", "points": 1000, "hidden": [16, 16, 16, 16], "activation": "tanh"}
    session = ok(bare_server, "session", {"config": heavy})["session"]
    started = time.perf_counter()
    ok(bare_server, "step", {"session": session, "steps": 200})
    step_seconds = time.perf_counter() - started
    assert step_seconds > 0.15, "the heavy step is too quick to show anything on this machine"

    stepping = threading.Thread(target=ok, args=(bare_server, "step", {"session": session, "steps": 200}))
    stepping.start()
    time.sleep(step_seconds / 10)
    started = time.perf_counter()
    assert call(bare_server, "digit/info")[0] == 200  # another tab's trivial request
    waited = time.perf_counter() - started
    stepping.join(timeout=120)
    assert waited < step_seconds / 3, f"a GET waited {waited:.2f} s while another tab stepped {step_seconds:.2f} s"

    before = ok(bare_server, "state", {"session": session})["steps"]
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = json.dumps({"session": session, "steps": 200}).encode()
    connection.request("POST", "/api/step", body, {"Content-Type": "application/json"})
    time.sleep(step_seconds / 10)
    connection.close()  # the tab went away mid-Play
    time.sleep(step_seconds / 2)
    after = ok(bare_server, "state", {"session": session})["steps"]  # waits for the lock: the steps have stopped
    assert before < after < before + 100, f"{after - before} of 200 steps ran for a client that went away"


def test_the_default_port_is_not_mkdocs_serves():
    completed = subprocess.run([sys.executable, "-m", "manualbp.playground", "--help"],
                               capture_output=True, text=True, timeout=120)
    assert "(default 8765;" in " ".join(completed.stdout.split())  # mkdocs serve takes 8000
    documented = (Path(__file__).parents[1] / "docs/pages/playground.md").read_text()
    assert "http://127.0.0.1:8765/" in documented and ":8000" not in documented


def test_a_bad_checkpoint_is_a_one_line_error(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "manualbp.playground", "--no-browser", "--checkpoint", str(tmp_path / "no.ckpt")],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().startswith(f"error: {tmp_path / 'no.ckpt'}: no such checkpoint")


# ----------------------------------------------------------------------------------------------
# The page in a real headless Chromium
# ----------------------------------------------------------------------------------------------


def _chromium() -> tuple[str | None, str | None, str]:
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, None, "selenium is not installed (pip install -e \".[test]\")"
    if not browser or not driver:
        return None, None, ("Chromium or chromedriver not found; install them with: "
                            "apt-get install -y chromium chromium-driver")
    return browser, driver, ""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    browser_path, driver_path, reason = _chromium()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_window_size(1400, 900)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 30, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def open_page(driver, url: str) -> str:
    driver.get(url + "/")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), what="the first state")
    return driver.execute_script("return document.body.dataset.session")


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def set_field(driver, element_id: str, value: str) -> None:
    """Type ``value`` into a field and leave it (the change event the page listens to)."""
    field = driver.find_element("id", element_id)
    driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'))",
                          field, value)


def choose(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def configured(driver, **expected) -> dict:
    def matches():
        state = driver.execute_script("return window.playground.state")
        return state if state and all(state["config"][k] == v for k, v in expected.items()) else None

    return wait_for(matches, what=f"the config {expected}")


def numbers(shown: str) -> list[float]:
    return [float(number) for number in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", shown)]


def click_node(driver, name: str) -> None:
    driver.find_element("css selector", f'#graph g.node[data-name="{name}"] rect').click()
    wait_for(lambda: driver.find_element("id", "details").get_attribute("data-name") == name, what=f"{name}'s panel")


@pytest.fixture
def page(browser, server):
    session = open_page(browser, server)
    return browser, server, session


def test_the_page_changes_data_and_net_steps_and_plays(page):
    driver, url, session = page
    assert driver.find_element("id", "tab-graph").is_displayed()
    assert "X" in driver.find_element("id", "graph").text and "Loss" in driver.find_element("id", "graph").text
    choose(driver, "dataset", "moons")
    configured(driver, dataset="moons")
    set_field(driver, "hidden", "8, 8")
    choose(driver, "activation", "relu")
    choose(driver, "loss", "softmax_cross_entropy")
    set_field(driver, "lr", "0.5")
    state = configured(driver, dataset="moons", hidden=[8, 8], activation="relu", loss="softmax_cross_entropy",
                       lr=0.5)
    assert node_names(state) == ["X", "Z₁", "Z₂", "Z₃", "Z₄", "Z₅", "Z₆", "Z₇", "Z₈"]
    set_field(driver, "points", "100")  # the slider
    configured(driver, points=100)
    driver.find_element("id", "step").click()
    wait_for(lambda: text(driver, "steps") == "1", what="one step")
    driver.find_element("id", "play").click()
    wait_for(lambda: int(text(driver, "steps")) >= 10, what="ten steps of Play")
    assert text(driver, "play") == "Pause"
    driver.find_element("id", "play").click()
    time.sleep(0.3)
    paused = int(text(driver, "steps"))
    time.sleep(0.5)
    assert int(text(driver, "steps")) == paused and text(driver, "play") == "Play"
    status, state = call(url, "state", {"session": session})
    assert state["steps"] == paused and state["config"]["dataset"] == "moons"
    assert state["trainLosses"][-1] < state["trainLosses"][0]
    driver.find_element("id", "reset").click()
    wait_for(lambda: text(driver, "steps") == "0", what="Reset")



LAYOUT = """
const inside = (inner, outer) => inner.x >= outer.x - 0.5 && inner.x + inner.width <= outer.x + outer.width + 0.5
  && inner.y >= outer.y - 0.5 && inner.y + inner.height <= outer.y + outer.height + 0.5;
const graph = document.getElementById("graph"), neurons = document.getElementById("neurons");
const overflowing = [...graph.querySelectorAll("g.node")].filter((g) =>
  [...g.querySelectorAll("text")].some((t) => !inside(t.getBBox(), g.querySelector("rect").getBBox())))
  .map((g) => g.dataset.name);
const cut = [...graph.querySelectorAll("text")].filter((t) => t.textContent.includes("…")).map((t) => t.textContent);
const headers = [...neurons.querySelectorAll("text")].map((t) => t.getBBox());
const top = Math.min(...[...neurons.querySelectorAll("circle")].map((c) => c.getBBox().y));
const scale = (svg) => svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
return {overflowing, cut, headerBottom: Math.max(...headers.map((b) => b.y + b.height)), top,
        graphFont: scale(graph) * parseFloat(getComputedStyle(graph.querySelector("text.small")).fontSize),
        neuronFont: scale(neurons) * 13, neuronHeightScale: neurons.getBoundingClientRect().height
          / neurons.viewBox.baseVal.height};
"""


def test_the_first_screen_learns_xor_in_a_few_seconds_and_its_labels_fit(page):
    driver, url, session = page
    open_page(driver, url)  # a fresh tab: the first screen
    state = driver.execute_script("return window.playground.state")
    assert state["config"]["dataset"] == "xor" and state["steps"] == 0
    assert not driver.find_element("id", "noise").is_enabled()  # XOR's four points have no noise
    assert not driver.find_element("id", "points").is_enabled()
    driver.find_element("id", "play").click()
    wait_for(lambda: int(text(driver, "steps")) >= 60, what="60 steps of Play")
    driver.find_element("id", "play").click()
    losses = driver.execute_script("return window.playground.state.trainLosses")
    assert losses[60] < 0.1 < losses[0], losses[:61:10]  # learned (the plateau is 0.125)
    assert text(driver, "plateau") == ""
    for mode in ("mode-forward", "mode-backward"):
        driver.find_element("id", mode).click()
        layout = driver.execute_script(LAYOUT)
        assert layout["overflowing"] == [] and layout["cut"] == [], (mode, layout)
        assert layout["headerBottom"] < layout["top"], layout  # the column names above the top neurons
    choose(driver, "dataset", "circles")
    configured(driver, dataset="circles")
    assert driver.find_element("id", "noise").is_enabled()
    for hidden in ("8, 8", "16, 16, 16", "16, 16, 16, 16"):
        set_field(driver, "hidden", hidden)
        configured(driver, hidden=[int(width) for width in hidden.split(", ")])
        layout = driver.execute_script(LAYOUT)
        assert layout["graphFont"] >= 8.5 and layout["neuronFont"] >= 12.5, (hidden, layout)  # not tiny
        assert layout["neuronHeightScale"] > 0.99 and layout["overflowing"] == [], (hidden, layout)
        assert layout["headerBottom"] < layout["top"], (hidden, layout)
    choose(driver, "activation", "sigmoid")
    choose(driver, "dataset", "xor")
    set_field(driver, "hidden", "8")
    configured(driver, dataset="xor", activation="sigmoid", hidden=[8])
    ok(url, "step", {"session": driver.execute_script("return document.body.dataset.session"), "steps": 40})
    driver.find_element("id", "step").click()
    wait_for(lambda: text(driver, "plateau").startswith("a plateau"), what="the plateau named")


def test_a_clicked_node_and_point_show_the_delta_of_autograd(page):
    driver, url, session = page
    choose(driver, "dataset", "circles")
    choose(driver, "activation", "tanh")
    set_field(driver, "hidden", "5, 4")
    configured(driver, dataset="circles", hidden=[5, 4], activation="tanh")
    driver.find_element("id", "step").click()
    wait_for(lambda: text(driver, "steps") == "1", what="one step")
    driver.find_element("id", "mode-backward").click()
    state = driver.execute_script("return window.playground.state")
    reference = reference_for(url, session, state)
    names = node_names(state)
    for name in ("Z₃", "Z₂", "X", "Yp"):
        click_node(driver, name)
        shown = numbers(text(driver, "details-delta"))
        expected = reference[names.index(name)][1][0]  # point 0
        assert np.allclose(shown, expected.numpy(), rtol=0, atol=TOLERANCE), (name, shown, expected)
        assert text(driver, "details-backward").startswith(f"backward: δ{name} = ")
    # a training point, clicked on the plot, selects its row
    x, y = driver.execute_script("return window.playground.pointPixels[7]")
    surface = driver.find_element("id", "surface")
    from selenium.webdriver.common.action_chains import ActionChains

    size = surface.size
    offset = round(x - size["width"] / 2), round(y - size["height"] / 2)
    ActionChains(driver).move_to_element_with_offset(surface, *offset).click().perform()
    wait_for(lambda: "training point 7" in text(driver, "details-title"), what="point 7")
    shown = numbers(text(driver, "details-delta"))
    assert np.allclose(shown, reference[names.index("Yp")][1][7].numpy(), rtol=0, atol=TOLERANCE)
    driver.find_element("css selector", '#graph g.node[data-name="W₂"] rect').click()
    wait_for(lambda: "W₂" in text(driver, "details-title"), what="W₂")
    assert text(driver, "details-backward").startswith("backward: δW₂ = Z₃ᵀ δZ₄")
    driver.find_element("id", "mode-forward").click()


def test_two_tabs_have_their_own_nets(page):
    driver, url, session = page
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    try:
        other = open_page(driver, url)
        assert other != session
        driver.find_element("id", "step").click()
        wait_for(lambda: text(driver, "steps") == "1", what="a step in the second tab")
    finally:
        driver.close()
        driver.switch_to.window(first)
    assert ok(url, "state", {"session": session})["steps"] == 0
    assert ok(url, "state", {"session": other})["steps"] == 1


def test_a_bad_parameter_shows_a_message_in_the_page(page):
    driver, url, session = page
    set_field(driver, "hidden", "8, 99")
    wait_for(lambda: "99" in text(driver, "message"), what="the message")
    assert text(driver, "message") == "hidden: each layer width must be a whole number from 1 to 16, got 99"
    set_field(driver, "hidden", "8")
    set_field(driver, "lr", "fast")
    wait_for(lambda: text(driver, "message").startswith("lr: "), what="the lr message")
    assert "got 'fast'" in text(driver, "message")
    set_field(driver, "lr", "0.5")
    wait_for(lambda: not driver.find_element("id", "message").is_displayed(), what="the message to go")


def draw_strokes(driver, strokes) -> None:
    """Drag the mouse along each stroke (points in canvas pixels), as a user draws."""
    from selenium.webdriver.common.action_chains import ActionChains

    pad = driver.find_element("id", "pad")
    centre = pad.size["width"] / 2, pad.size["height"] / 2
    for stroke in strokes:
        actions = ActionChains(driver)
        actions.move_to_element_with_offset(pad, round(stroke[0][0] - centre[0]), round(stroke[0][1] - centre[1]))
        actions.click_and_hold()
        for (x0, y0), (x1, y1) in zip(stroke[:-1], stroke[1:], strict=True):
            for t in np.linspace(0.1, 1, 10):
                x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                actions.move_to_element_with_offset(pad, round(x - centre[0]), round(y - centre[1]))
        actions.release().perform()


def test_a_drawn_digit_is_predicted_with_a_heat_map(page):
    driver, url, session = page
    driver.find_element("id", "tab-digit").click()
    assert driver.find_element("id", "pad").is_displayed()
    assert "checkpoint" in text(driver, "digit-info")
    draw_strokes(driver, [[(70, 60), (210, 60), (120, 230)]])  # a 7
    wait_for(lambda: driver.execute_script("return window.playground.digit"), what="a prediction")
    digit = driver.execute_script("return window.playground.digit")
    assert text(driver, "digit-prediction").startswith(str(digit["predicted"]))
    assert np.abs(np.array(digit["pixelDelta"])).max() > 0 and np.array(digit["input"]).max() > 0.9
    answer = ok(url, "digit", {"image": driver.execute_script("return document.getElementById('pad').toDataURL()")})
    assert answer["predicted"] == digit["predicted"]
    choose(driver, "label", "4")
    wait_for(lambda: driver.execute_script("return window.playground.digit.label") == 4, what="label 4's δ")
    driver.find_element("id", "clear").click()
    driver.find_element("id", "predict").click()
    wait_for(lambda: "no digit found" in text(driver, "message"), what="the blank canvas message")
    driver.find_element("id", "tab-graph").click()


def test_a_step_of_a_2_8_8_1_net_on_200_points_shows_within_100_ms(page):
    driver, url, session = page
    choose(driver, "dataset", "circles")
    choose(driver, "loss", "euclidean")
    set_field(driver, "hidden", "8, 8")
    set_field(driver, "points", "200")
    state = configured(driver, dataset="circles", hidden=[8, 8], points=200, loss="euclidean", batch=0)
    assert [len(node["value"]) for node in state["nodes"]][-1] == 1  # 2-8-8-1
    driver.execute_script("window.playground.stepTimes = []")
    for count in range(1, 31):
        driver.find_element("id", "step").click()
        wait_for(lambda count=count: text(driver, "steps") == str(count), what=f"step {count}")
    times = driver.execute_script("return window.playground.stepTimes")
    median = statistics.median(times)
    print(f"step of a 2-8-8-1 net on 200 points, page round trip: median {median:.1f} ms, "
          f"max {max(times):.1f} ms over {len(times)} steps")
    assert median < 100, times


@pytest.mark.slow
def test_screenshots_of_both_tabs(page, tmp_path):
    """Screenshots of the two tabs; with PLAYGROUND_SCREENSHOTS=<folder>, kept there (the README's)."""
    driver, url, session = page
    driver.set_window_size(1320, 860)
    choose(driver, "dataset", "xor")
    set_field(driver, "hidden", "3")
    choose(driver, "activation", "sigmoid")
    choose(driver, "loss", "euclidean")
    set_field(driver, "lr", "20")
    configured(driver, dataset="xor", hidden=[3], lr=20.0)
    ok(url, "step", {"session": session, "steps": 200})
    ok(url, "step", {"session": session, "steps": 200})
    driver.find_element("id", "step").click()
    wait_for(lambda: text(driver, "steps") == "401", what="401 steps")
    driver.find_element("id", "mode-backward").click()
    click_node(driver, "Z₃")
    time.sleep(0.8)  # the backward animation's last flash
    shots = {"graph": tmp_path / "playground_graph.png", "digit": tmp_path / "playground_digit.png"}
    driver.save_screenshot(str(shots["graph"]))
    driver.find_element("id", "mode-forward").click()
    driver.find_element("id", "tab-digit").click()
    driver.find_element("id", "clear").click()
    three = [[(90, 50), (150, 40), (160, 120), (110, 150)], [(110, 150), (165, 170), (150, 235), (85, 230)]]
    draw_strokes(driver, three)
    wait_for(lambda: driver.execute_script("return window.playground.digit"), what="a prediction")
    time.sleep(0.3)
    driver.save_screenshot(str(shots["digit"]))
    driver.find_element("id", "tab-graph").click()
    folder = os.environ.get("PLAYGROUND_SCREENSHOTS")
    for name, path in shots.items():
        with Image.open(path) as image:
            assert image.size[0] >= 1000 and len(image.getcolors(1 << 16) or range(300)) > 20, name
            if folder:  # a palette PNG: a fraction of the size, the same look
                image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
                    Path(folder) / path.name, optimize=True)
