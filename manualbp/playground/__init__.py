"""The backprop playground: the lecture's computational graph in the browser, every Z and δ live.

``python -m manualbp.playground [--port 8765] [--host 127.0.0.1] [--no-browser] [--checkpoint PATH]``
starts a local web server (Starlette on uvicorn; ``pip install -e ".[playground]"``) and opens the page.
``lab``: the nets, data and formulas (no web); ``digits``: the Draw a digit tab; ``app``: the web app;
``static/``: the one page (HTML, JS, CSS; no build step).
"""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser

DEFAULT_PORT = 8765  # not 8000, which `mkdocs serve` takes: the docs and the playground can run side by side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manualbp.playground",
        description="A local web page that trains small nets and shows every Z and δ of the lecture's graph.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this computer only)")
    parser.add_argument("--no-browser", action="store_true", help="do not open the page in the default browser")
    parser.add_argument("--checkpoint",
                        help="an MNIST checkpoint (python train.py model=mnist) for the Draw a digit tab")
    arguments = parser.parse_args(argv)
    if not 0 <= arguments.port <= 65535:
        parser.error(f"--port: expected 0 to 65535, got {arguments.port}")
    try:
        import uvicorn

        from manualbp.playground.app import LOCAL_HOSTS, create_app
    except ImportError as error:
        print(f"error: the playground needs {error.name}; install it with: pip install -e \".[playground]\"",
              file=sys.stderr)
        return 1
    import torch

    from manualbp.playground.digits import DigitLab
    from manualbp.predict import PredictError

    torch.set_num_threads(1)  # tiny nets: one thread is fastest and leaves the other cores alone
    digits = None
    digits_error = "start the playground with --checkpoint PATH (a checkpoint of python train.py model=mnist)"
    if arguments.checkpoint:
        try:
            digits = DigitLab(arguments.checkpoint)
        except PredictError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    hosts = (*LOCAL_HOSTS, arguments.host)  # the names the page may be opened by; others are refused
    config = uvicorn.Config(create_app(digits, digits_error, hosts), host=arguments.host, port=arguments.port,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    def announce() -> None:  # once the socket listens: the address (with the real port when --port 0)
        while not server.started and not server.should_exit:
            threading.Event().wait(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            host = arguments.host if ":" not in arguments.host else f"[{arguments.host}]"
            url = f"http://{host}:{port}/"
            print(f"manualbp playground at {url}  (Ctrl+C to stop)", flush=True)
            if not arguments.no_browser:
                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()  # on Ctrl+C (SIGINT) or SIGTERM uvicorn stops accepting, finishes what runs, closes
    except KeyboardInterrupt:  # ... and then passes the Ctrl+C on: the shutdown is already done
        pass
    except SystemExit:  # uvicorn's way out when it cannot listen (it has printed the reason)
        if server.started:
            raise
        print(f"error: cannot listen on {arguments.host}:{arguments.port}; give another --port (or --port 0 for "
              f"any free one)", file=sys.stderr)
        return 1
    print("playground stopped", flush=True)
    return 0
