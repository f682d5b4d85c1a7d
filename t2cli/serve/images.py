"""Images in chat requests: OpenAI ``image_url`` parts turned into RGB pictures, within limits.

A part's URL is a ``data:`` URL (base64 PNG, JPEG, WebP or GIF), or, only when the server
runs with ``--allow-remote-images``, an http(s) URL the server fetches. Every way in is
bounded (``ImageLimits``): decoded bytes, pixels (read from the header before any pixel is
decoded; Pillow's own decompression-bomb guard stands behind it) and images per request.
Each violation is an OpenAI error: 400 for what is not a usable image, 413 for what is too
large; never a traceback.

Fetching a URL a client names is a request the server makes on that client's behalf
(server-side request forgery): it could reach what only the server can reach. So remote
URLs are off by default; when on, only http and https, at most ``MAX_REDIRECTS`` redirects,
each hop's host resolved and every address checked, the connection made to the checked
address (a DNS answer that changes between check and connect cannot redirect it; TLS
still verifies the certificate against the host name), loopback, private, link-local and
other non-global addresses refused unless ``allow_private``, no proxy from the
environment, a timeout on the whole fetch and the byte limit enforced while streaming.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from dataclasses import dataclass

import httpx
from PIL import Image, UnidentifiedImageError

from t2cli.serve.errors import APIError, bad_request, too_large

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # what OpenAI's API takes; Pillow's other decoders stay out of reach
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class ImageLimits:
    """How much image a request may carry, and where from (docs/serving.md, docs/security.md)."""

    max_bytes: int = 5 << 20  # one image, decoded (or fetched)
    max_pixels: int = 16_000_000  # one image, width x height (4000 x 4000)
    max_images: int = 4  # per request
    allow_remote: bool = False  # http(s) URLs, fetched by the server
    allow_private: bool = False  # ... also on loopback, private and link-local addresses
    timeout_s: float = 10.0  # one remote fetch, redirects included

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def body_bytes(self) -> int:
        """What ``max_images`` images of ``max_bytes`` add to a request body as base64 data URLs."""
        return self.max_images * (4 * ((self.max_bytes + 2) // 3) + 64)


def _invalid(message: str, param: str) -> APIError:
    return bad_request(message, param=param, code="invalid_image")


def _too_large(message: str, param: str) -> APIError:
    error = too_large(message)
    error.param = param
    return error


# --------------------------------------------------------------------------- bytes: data URLs and remote URLs


async def read_image(url: str, limits: ImageLimits, param: str) -> bytes:
    """The encoded image a part's URL names: decoded from a data URL, or fetched when remote URLs are allowed."""
    scheme = url.partition(":")[0].strip().lower()
    if scheme == "data":
        return data_url_bytes(url, limits, param)
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise bad_request(
                "this server does not fetch image URLs: send the image as a data URL "
                "(data:image/png;base64,...), or start the server with --allow-remote-images",
                param=param,
                code="remote_images_disabled",
            )
        return await fetch(url, limits, param)
    shown = scheme if len(scheme) <= 16 else scheme[:16] + "..."
    raise _invalid(f"image URLs with scheme {shown!r} are not accepted: send a data URL (base64)", param)


def data_url_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    """The bytes of ``data:image/...;base64,...`` (the size is checked before decoding)."""
    header, comma, payload = url.partition(",")
    media, *options = header[len("data:") :].split(";")
    if not comma or "base64" not in (o.strip().lower() for o in options):
        raise _invalid("an image data URL must be base64: data:image/png;base64,...", param)
    if not media.strip().lower().startswith("image/"):
        raise _invalid(f"the data URL's media type is {media.strip()[:40]!r}, not an image type", param)
    if (len(payload) - payload.count("=")) * 3 // 4 > limits.max_bytes:
        raise _too_large(f"the image is over {limits.max_bytes} bytes, the most this server takes", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("the image data URL is not valid base64", param) from None


async def fetch(url: str, limits: ImageLimits, param: str) -> bytes:
    """GET ``url`` within ``limits.timeout_s`` and ``limits.max_bytes`` (redirects followed and checked)."""
    try:
        return await asyncio.wait_for(_fetch(url, limits, param), limits.timeout_s)
    except asyncio.TimeoutError:
        raise _invalid(f"fetching the image took over {limits.timeout_s:g} s", param) from None
    except httpx.HTTPError as exc:
        raise _invalid(f"fetching the image failed: {type(exc).__name__}", param) from None


async def _fetch(url: str, limits: ImageLimits, param: str) -> bytes:
    # No proxy from the environment (the address check must be on the address connected to); redirects by hand.
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=limits.timeout_s) as client:
        for _ in range(MAX_REDIRECTS + 1):
            target = _checked_url(url, param)
            host = target.raw_host.decode("ascii")  # IDNA-encoded: what DNS and TLS see
            port = target.port or (443 if target.scheme == "https" else 80)
            address = await _public_address(host, port, limits, param)
            if address is None:
                raise _invalid(
                    f"image host {host!r} resolves to a loopback, private or otherwise non-public address: "
                    "refused (the server can be started with --allow-private-image-hosts)",
                    param,
                )
            request = client.build_request(
                "GET",
                target.copy_with(host=address),  # connect to the address just checked, not to a new DNS answer
                headers={"Host": target.netloc.decode("ascii"), "Accept": "image/*"},
                extensions={"sni_hostname": host},  # TLS: SNI and the certificate check use the host name
            )
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(target.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise _invalid(f"fetching the image gave HTTP {response.status_code}", param)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limits.max_bytes:
                    raise _too_large(
                        f"the image is {declared} bytes; this server takes at most {limits.max_bytes}", param
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limits.max_bytes:  # stop reading: never hold more than the limit
                        raise _too_large(
                            f"the image is over {limits.max_bytes} bytes, the most this server takes", param
                        )
                return bytes(body)
            finally:
                await response.aclose()
    raise _invalid(f"fetching the image was redirected more than {MAX_REDIRECTS} times", param)


def _checked_url(url: str, param: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise _invalid("the image URL is not a valid URL", param) from None
    if target.scheme not in ("http", "https") or not target.host:
        raise _invalid("an image URL (or where it redirects) must be http(s) with a host", param)
    if target.userinfo:
        raise _invalid("an image URL must not carry credentials", param)
    return target


def is_public(address: str) -> bool:
    """Whether ``address`` is a global unicast address (not loopback, private, link-local, CGNAT, multicast...)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip.is_global and not ip.is_multicast


async def _public_address(host: str, port: int, limits: ImageLimits, param: str) -> str | None:
    """An address of ``host`` to connect to; None when any of them is non-public (unless private hosts are allowed)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise _invalid(f"image host {host!r} cannot be resolved", param)
    if not limits.allow_private and not all(is_public(a) for a in addresses):
        return None  # one private answer is enough to refuse: an attacker chooses which one is used
    return addresses[0]


# --------------------------------------------------------------------------- pixels


def open_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """The RGB picture in ``data`` (its first frame): a 400 if Pillow cannot read it, a 413 if it has too many pixels."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > limits.max_pixels:
                raise _too_large(
                    f"the image is {width}x{height} pixels, over this server's limit of {limits.max_pixels} pixels",
                    param,
                )
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise _invalid("the image is not a PNG, JPEG, WebP or GIF file Pillow can read", param) from None
    except Image.DecompressionBombError:
        raise _too_large(f"the image has too many pixels (over {limits.max_pixels})", param) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's ways of saying truncated or damaged
        raise _invalid(f"the image cannot be decoded ({str(exc)[:120]})", param) from None
