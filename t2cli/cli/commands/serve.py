"""``t2 serve``: an OpenAI-compatible HTTP server that adapts its weights per request."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from t2cli.cli.console import err
from t2cli.cli.options import DeviceOpt, ModelOpt
from t2cli.errors import T2Error, UsageError


def serve_cmd(
    model: ModelOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; another than loopback needs --api-key or --insecure.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            "-s",
            help="Pass 1 of model t2-auto: none, expert:NAME, prompt, classifier, cem, router or router-soft "
            "(default: router when the base model has one, else none).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="T2_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1 and /metrics.",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without --api-key (trusted networks).")
    ] = False,
    cache_memory: Annotated[
        str, typer.Option("--cache-memory", help="Memory for the composed weights of hot experts (e.g. 2GiB, 0).")
    ] = "2GiB",
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="The largest max_tokens a request may ask.")
    ] = 2048,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Sequences generated together (same weights) at most.")
    ] = 16,
    batching: Annotated[
        str,
        typer.Option(
            "--batching",
            help="continuous: requests join a running batch between decoding steps (text models with "
            "full-attention caches; others fall back); static: one generation per batch.",
        ),
    ] = "continuous",
    queue_size: Annotated[
        int, typer.Option("--queue-size", min=1, help="Requests waiting for the model at most (then 429).")
    ] = 64,
    max_n: Annotated[int, typer.Option("--max-n", min=1, help="Choices (n) per request at most.")] = 8,
    max_images: Annotated[
        int, typer.Option("--max-images", min=1, help="Images (image_url parts) per chat request at most.")
    ] = 4,
    max_image_size: Annotated[
        str, typer.Option("--max-image-size", help="Bytes of one image at most, decoded or fetched (e.g. 5MiB).")
    ] = "5MiB",
    allow_remote_images: Annotated[
        bool,
        typer.Option(
            "--allow-remote-images",
            help="Fetch http(s) image URLs (else only data: URLs). The server then makes requests a client names: "
            "see docs/security.md.",
        ),
    ] = False,
    allow_private_image_hosts: Annotated[
        bool,
        typer.Option(
            "--allow-private-image-hosts",
            help="With --allow-remote-images, also fetch from loopback, private and link-local addresses.",
        ),
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the model over an OpenAI-compatible API: the request's `model` picks the weights.

    `model` is the base model's name, an expert's name, or t2-auto (pass 1 chooses); the body field
    "t2": {"experts": {"a": 0.7, "b": 0.3}} mixes experts per request. Every answer says which
    weights answered (field t2, header x-t2-weights). Endpoints: /v1/models, /v1/chat/completions,
    /v1/completions (streamed or not), /metrics, and a playground at /. A vision-language model
    also reads image_url parts (data: URLs; http(s) only with --allow-remote-images). See docs/serving.md.

    Examples:

      t2 serve                                   # http://127.0.0.1:8000, the embedded model

      t2 serve -m qwen2.5-0.5b --strategy router-soft --cache-memory 4GiB

      t2 serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
    """
    import uvicorn  # noqa: PLC0415 - CLI start-up: uvicorn and its protocols (~0.1 s)

    from t2cli.ask.engine import ROUTED_STRATEGIES, prepare_model, targets_for  # noqa: PLC0415 - CLI start-up: pulls torch and transformers (~4 s)
    from t2cli.ask.strategies import parse_strategy  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.bank.install import first_use_install  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.serve.app import create_app  # noqa: PLC0415 - CLI start-up: pulls FastAPI and torch (~3 s)
    from t2cli.serve.images import ImageLimits  # noqa: PLC0415 - CLI start-up: pulls Pillow and httpx (~0.1 s)
    from t2cli.serve.options import check_batching, check_bind, parse_size  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (<1 ms)
    from t2cli.serve.service import ServeSettings, Service  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.svf.adaptable import load_adaptable  # noqa: PLC0415 - CLI start-up: pulls torch and transformers (~4 s)

    check_bind(host, api_key, insecure)
    check_batching(batching)
    cache_bytes = parse_size(cache_memory)
    if allow_private_image_hosts and not allow_remote_images:
        raise UsageError(
            "--allow-private-image-hosts widens --allow-remote-images, which is not given",
            "add --allow-remote-images, or leave both out (data: URLs only)",
        )
    image_bytes = parse_size(max_image_size, "--max-image-size")
    if image_bytes < 1:
        raise UsageError(f"--max-image-size {max_image_size!r} is 0 bytes", "e.g. 5MiB")
    if strategy is not None:
        parse_strategy(strategy)
    settings = ServeSettings(
        api_key=api_key or None,
        strategy=strategy,
        max_tokens=max_tokens,
        default_max_tokens=min(256, max_tokens),
        max_n=max_n,
        max_queue=queue_size,
        max_batch=max_batch,
        batching=batching,
        cache_bytes=cache_bytes,
        images=ImageLimits(
            max_bytes=image_bytes,
            max_images=max_images,
            allow_remote=allow_remote_images,
            allow_private=allow_private_image_hosts,
        ),
    )
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the app is up, never refused
    except OSError as exc:
        raise T2Error(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", "choose another --port or --host"
        ) from None
    with open_registry() as registry:
        prepared = prepare_model(registry, model, None)
        if strategy is None or parse_strategy(strategy)[0].name in ROUTED_STRATEGIES:
            # as `t2 ask` does: a fresh home gets the model's starter bank once, so t2-auto adapts from the start
            installed = first_use_install(registry, prepared.fingerprint, model=model)
            if installed is not None and installed.changed:
                err.print(installed.summary(prepared.model_name), markup=False)
                prepared = prepare_model(registry, model, None)  # the base model is registered now
        err.print(f"loading {prepared.model_name}...", markup=False)
        adaptable = load_adaptable(
            registry, model, targets=targets_for(registry, prepared.base_model_id), device=device
        )
        service = Service(registry, adaptable, settings)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        err.print(
            f"serving {service.base_name} at http://{shown}:{bound}/v1 (playground: http://{shown}:{bound}/; "
            f"t2-auto: {service.resolver.default_strategy}; Ctrl-C stops)",
            markup=False,
        )
        config = uvicorn.Config(create_app(service), log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
        uvicorn.Server(config).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
