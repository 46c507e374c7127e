"""Settings of the HTTP server: the limits a public deployment needs, all in one typed place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    """Loopback by default: exposing the server is a deliberate choice (`--host 0.0.0.0`)."""
    port: int = 8000
    model_name: str = "speechllm-default"
    """The id /v1/models lists; requests may name it or `default`."""
    api_key: str | None = None
    """When set, /v1/* requires `Authorization: Bearer <api_key>`; the page and /health stay open."""
    cors_origins: list[str] = field(default_factory=list)
    """Origins allowed to call the API from a browser; empty means no CORS headers at all."""
    max_queue: int = 64
    """Requests waiting for the model beyond this get 429."""
    max_batch: int = 8
    timeout: float = 120.0
    """Seconds a request may take, queueing included, before it gets 504."""
    max_request_mb: float = 25.0
    """Bodies larger than this get 413 (base64 audio is 4/3 of the file)."""
    max_audio_seconds: float = 120.0
    """Total audio duration per request; longer gets 400."""
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    """A request asking for more new tokens than this gets 400."""
    audio_ttl_seconds: float = 3600.0
    """How long a spoken answer's audio id may be cited in a later turn (its `expires_at`)."""

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_batch", "default_max_tokens", "max_tokens_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout", "max_request_mb", "max_audio_seconds", "audio_ttl_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty; leave it unset to disable the check")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)
